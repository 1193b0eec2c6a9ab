"""What the base's architecture allows a LoRA export: vLLM serves decoders only, at the causal LM's module paths."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftkit.errors import PeftkitError

if TYPE_CHECKING:
    from peftkit.models import BaseRef


def is_decoder(model_type: str) -> bool:
    """A decoder-only (causal LM) architecture, the kind vLLM serves LoRA on.

    transformers lists BERT-style encoders under causal LM too (``BertLMHeadModel``), so a model type that also has
    a masked-LM class does not count; neither do encoder-decoders (BART and kin have both classes as well).
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    return (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    )


def check_decoder(ref: BaseRef) -> None:
    """Refuse ``--to vllm`` for an encoder base."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(ref.folder))
    if not is_decoder(config.model_type):
        raise PeftkitError(
            f"--to vllm: base {ref.name} is a {config.model_type} encoder; vLLM serves LoRA adapters on decoder "
            "(causal LM) models only; use --to peft-lora for a plain peft LoRA"
        )


def causal_lm_layout(ref: BaseRef, module_paths: list[str]) -> str:
    """Check that every adapted module sits at the same path in the base's causal-LM class; returns its name.

    peft keys LoRA weights by the module path inside the model it wrapped: here the sequence classifier
    (``LlamaForSequenceClassification.model.layers.0.self_attn.q_proj``). vLLM applies them to the causal LM
    (``LlamaForCausalLM.model.layers.0...``). Built on the meta device: no weights are read.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(ref.folder))
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config)
    modules = dict(lm.named_modules())
    missing = [p for p in module_paths if not isinstance(modules.get(p), torch.nn.Linear)]
    if missing:
        raise PeftkitError(
            f"--to vllm: {len(missing)} adapted module(s) have no Linear at the same path in "
            f"{type(lm).__name__} (first: {missing[0]}), so vLLM would not apply them; use --to peft-lora"
        )
    return type(lm).__name__
