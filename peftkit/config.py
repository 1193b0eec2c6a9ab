"""Typed run configuration: a recipe YAML, CLI flags and ``--set key=value`` overrides, validated once.

    task: classification
    data:   {train: builtin:reviews, text_column: text, label_column: label}
    model:  {name: minilm-l6, quant: none}
    method: {name: lora, r: 8}
    train:  {epochs: 3, batch_size: 32}

All problems are reported together, each with the key at fault and, for a misspelt key, the nearest valid one.
The resolved config is written beside every adapter (``peftkit.json``), so a run can be repeated from its folder.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from peftkit.errors import PeftkitError
from peftkit.methods import METHODS

Task = Literal["classification", "ordinal", "regression"]
Quant = Literal["none", "8bit"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the rows come from and how a row becomes text and a label."""

    train: str = Field(
        "builtin:reviews",
        description="CSV/JSONL/Parquet file, or packaged data: builtin:reviews, builtin:cdnow/churn|value|conversion, "
        "builtin:amazon-snippets[/polar], builtin:synth/<task> (docs/data.md)",
    )
    eval: str | None = Field(None, description="held-out file; default: a seeded split of `train`")
    text_column: str = "text"
    label_column: str = "label"
    template: str | None = Field(
        None, description="text built from several columns: 'orders: {orders_90d}; q: {query}'"
    )
    labels: list[str] | None = Field(
        None, description="label order; required for ordinal unless labels are numbers"
    )
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="share held out when no eval file is given")
    max_train_rows: int | None = Field(
        None, gt=0, description="seeded subsample of the training rows (after dedup)"
    )
    max_eval_rows: int | None = Field(None, gt=0, description="seeded subsample of the eval rows")
    max_length: int = Field(128, gt=0, description="tokens kept per row; longer rows are truncated")
    group_column: str | None = Field(
        None,
        min_length=1,
        description="rows sharing a value here (the review a sentence comes from, a customer) stay on one side of "
        "the train/eval split; the held-out side is whole groups",
    )
    deduplicate: bool = Field(
        True,
        description="drop repeated texts (and texts seen with two labels) before splitting; false where each row "
        "is a different entity whose text serialises its fields (one row per customer), so equal texts are "
        "different customers",
    )
    mask_pii: bool = Field(
        True,
        description="replace phone numbers, e-mail addresses, ID-card and bank-card numbers (Chinese and "
        "international formats, checksums checked) by [PHONE]/[EMAIL]/[ID]/[CARD] before training; scoring masks "
        "the same way for this adapter; counts in the manifest (docs/privacy.md)",
    )


class ModelConfig(_Strict):
    name: str = Field(
        "minilm-l6",
        description="alias (smollm2-135m, minilm-l6, multilingual-e5-small, gemma3-270m), local HF folder, .gguf or E5S1 .bin file",
    )
    quant: Quant = Field("none", description="8bit: LLM.int8 base via bitsandbytes (CPU or CUDA)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="the frozen base's weights (adapters and head stay float32); auto = bfloat16 on CUDA and on CPUs "
        "with bf16 matrix units (AMX-BF16, AVX512-BF16), float32 elsewhere",
    )
    pooling: Literal["auto", "mean", "cls", "last"] = Field(
        "auto",
        description="how the head sees a sequence: mean of token states (what sentence-transformers/E5 encoders "
        "were trained for), cls ([CLS] + pooler), last (last non-pad token, decoders); auto: what the base's "
        "folder says (1_Pooling/config.json), else last for decoders and cls for encoders",
    )
    head_init: Literal["auto", "verbalizer", "random"] = Field(
        "auto",
        description="how the fresh task head starts: verbalizer (decoders: each label's row from the LM head's rows "
        "of its words), random; auto: verbalizer for decoders, a cumulative link (shared row, thresholds at the "
        "label shares) for ordinal encoder heads, random otherwise (peftkit.heads)",
    )


class TrainConfig(_Strict):
    epochs: float | None = Field(
        None,
        gt=0,
        description="default: 1, or more on small data so the run takes at least 100 optimizer steps (at most 10 "
        "epochs; peftkit.training.plan)",
    )
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    batch_size: int = Field(16, gt=0)
    grad_accum: int = Field(
        1, gt=0, description="optimizer step every N batches (effective batch = N x batch_size)"
    )
    lr: float | None = Field(
        None,
        gt=0,
        description="adapter learning rate; default: the method's own (see `peftkit train --help`), scaled up for "
        "runs under 500 optimizer steps (peftkit.training.plan)",
    )
    head_lr: float | None = Field(
        None,
        gt=0,
        description="task-head learning rate; default: 5 x lr (at most 0.02), or lr for a verbalizer-initialised "
        "head",
    )
    select_best: bool = Field(
        True,
        description="evaluate on the held-out rows after every epoch and keep the best adapter, not the last, by "
        "the task's primary metric (macro-F1 for classification, at the decision threshold for two labels; MAE "
        "for ordinal and regression; ties go to the lower loss)",
    )
    select_metric: str = Field(
        "auto",
        description="the held-out metric select_best keeps the best epoch by: auto = the task's primary metric; or "
        "accuracy, macro_f1, auc, pr_auc, log_loss, ece, brier, mae, rmse, spearman (those the task reports)",
    )
    class_weights: Literal["auto", "balanced", "none"] = Field(
        "auto",
        description="weight the loss towards rare classes: auto = balanced when a class is under a fifth of the "
        "training rows of a classification task; balanced = always; none = never (peftkit.tasks.decide)",
    )
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    seed: int = 42
    gradient_checkpointing: bool = Field(False, description="less activation memory, ~30% slower")
    compile: bool = Field(
        False,
        description="torch.compile the model (fused element-wise work): on a 2-core CPU, SmolLM2 LoRA bf16 steps ran "
        "~25% faster after ~3.5 minutes of compiling, so it pays only on runs of ~1,000+ steps; needs a C++ compiler "
        "on CPU and falls back to eager without one",
    )
    group_by_length: bool = Field(
        True,
        description="batch rows of similar length: less padding, same data; batches are redrawn every epoch",
    )
    eval_batch_size: int = Field(64, gt=0)
    save_steps: int = Field(200, gt=0, description="checkpoint every N steps (for --resume)")
    logging_steps: int = Field(10, gt=0)
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)

    @field_validator("select_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        from peftkit.tasks import DIRECTIONS

        if value != "auto" and value not in DIRECTIONS:
            raise ValueError(f"unknown metric {value!r}; use auto or one of {', '.join(DIRECTIONS)}")
        return value


class SegmentsConfig(_Strict):
    """One adapter per value of a column (platform, user segment), beside a global adapter: an adapter bank."""

    column: str = Field(description="column whose values name the segments, e.g. platform")
    min_rows: int = Field(
        200, gt=0, description="segments with fewer training rows get no adapter of their own and fall back"
    )
    warm_start: bool = Field(
        True, description="start each segment adapter from the global one instead of from scratch"
    )
    fallback: Literal["global", "error"] = Field(
        "global", description="what answers a segment without an adapter: the global adapter, or an error"
    )
    values: list[str] | None = Field(
        None, description="train adapters for these values only (others fall back); default: every value"
    )
    parallel: Literal["segments", "data"] = Field(
        "segments",
        description="under torchrun/accelerate: each process trains its own share of the segment adapters "
        "(segments), or every segment adapter data-parallel over all processes (data); the global adapter is "
        "always data-parallel",
    )


class DecisionConfig(_Strict):
    """How probabilities and labels come out of the head, fitted on the held-out rows after training."""

    calibrate: bool = Field(
        True,
        description="fit a temperature on the held-out rows so probabilities match observed rates (ECE and Brier "
        "before/after in the manifest; reliability.png in the adapter folder); never changes the ranking",
    )
    threshold: str = Field(
        "macro_f1",
        description="two labels only: the positive label's probability above which a row is positive, chosen on "
        "the held-out rows for: macro_f1 (best macro-F1, the task's primary metric), f1 (best F1 of the positive "
        "label), precision:P (most recall at precision >= P), recall:R (fewest positives at recall >= R), top:S "
        "(the top share S of rows), none (argmax)",
    )
    positive: str | None = Field(
        None, description="two labels only: the positive label; default: the rarer one in the training rows"
    )

    @field_validator("threshold")
    @classmethod
    def _objective(cls, value: str) -> str:
        from peftkit.tasks.threshold import Objective

        try:
            return str(Objective.parse(value))
        except PeftkitError as exc:
            raise ValueError(str(exc).removeprefix(f"decision.threshold={value!r}: ")) from None


MethodConfig = Annotated[Union[tuple(spec.options for spec in METHODS.values())], Field(discriminator="name")]


class RunConfig(_Strict):
    task: Task = "classification"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=lambda: METHODS["lora"].options(name="lora"))
    train: TrainConfig = Field(default_factory=TrainConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    segments: SegmentsConfig | None = Field(
        None, description="train an adapter bank: a global adapter and one adapter per segment"
    )
    output: str | None = Field(None, description="adapter folder; default runs/<data>-<model>-<method>")

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        spec = METHODS[self.method.name]
        if self.train.gradient_checkpointing and not spec.supports_gradient_checkpointing:
            raise ValueError(
                f"method {spec.name} does not work with gradient checkpointing; set train.gradient_checkpointing=false"
            )
        if spec.full_model and self.model.quant == "8bit":
            raise ValueError(
                "method full trains every weight and int8 weights take no gradient; set model.quant=none "
                "or pick a PEFT method"
            )
        if spec.full_model and self.segments is not None:
            raise ValueError(
                "method full cannot train an adapter bank: a bank hot-swaps small adapters over one shared base; "
                "pick a PEFT method or drop segments"
            )
        return self

    @property
    def lr(self) -> float:
        return self.train.lr if self.train.lr is not None else METHODS[self.method.name].default_lr

    def default_output(self) -> str:
        data = _data_slug(self.data.train)
        model = (
            Path(self.model.name).stem
            if ("/" in self.model.name or self.model.name.endswith(".gguf"))
            else self.model.name
        )
        if self.segments is not None:
            return str(Path("banks") / f"{data}-{model}-{self.method.name}-by-{self.segments.column}")
        return str(Path("runs") / f"{data}-{model}-{self.method.name}")


def _data_slug(train: str) -> str:
    """``builtin:reviews`` -> ``reviews``, ``builtin:cdnow/churn`` -> ``cdnow-churn``, ``builtin:synth/churn?rows=9``
    -> ``synth-churn`` (each built-in set gets its own default folder), ``data/x.csv`` -> ``x``."""
    if train.startswith("builtin:"):
        return train.removeprefix("builtin:").partition("?")[0].replace("/", "-")
    return Path(train).stem


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "data.labels=[a,b]"]`` -> ``{"train.lr": 0.001, ...}``; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PeftkitError(f"--set {item!r}: expected key=value, e.g. --set train.lr=1e-3")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def load_config(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Build a `RunConfig` from a recipe file (or defaults) and dotted-key overrides, validated once.

    A ``method.name`` override that changes the method drops the recipe's other ``method.*`` keys: they belong to the
    recipe's method.
    """
    raw: dict[str, Any] = {}
    where = "config"
    if recipe is not None:
        path = Path(recipe)
        where = str(path)
        if not path.is_file():
            raise PeftkitError(f"recipe {path} does not exist; `peftkit recipes ls` lists the built-in ones")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise PeftkitError(f"recipe {path} is not valid YAML: {exc}".replace("\n", " ")) from exc
        if not isinstance(raw, dict):
            raise PeftkitError(
                f"recipe {path}: expected a mapping of sections (task, data, model, method, train)"
            )
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    if isinstance(raw.get("method"), dict):
        raw["method"].setdefault("name", "lora")  # the default method, as when the section is absent
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise PeftkitError(f"{where}: " + "; ".join(_explain(err) for err in exc.errors())) from None


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if parts == ["method", "name"] and node.get("name") not in (None, value):
        node.clear()
    node[parts[-1]] = value


def _explain(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and p in METHODS)]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'{_suggest(loc)}"
    if err["type"] == "union_tag_invalid":
        return f"unknown method {err['input'].get('name')!r}; choose one of {', '.join(METHODS)}"
    msg = err["msg"].removeprefix("Value error, ")
    if not key:
        return msg
    return (
        f"{key}: {msg} (got {err['input']!r})"
        if "input" in err and not isinstance(err["input"], dict)
        else f"{key}: {msg}"
    )


def _suggest(loc: list[str]) -> str:
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
    fields = sections[loc[0]].model_fields if len(loc) == 2 and loc[0] in sections else RunConfig.model_fields
    close = difflib.get_close_matches(loc[-1], list(fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
