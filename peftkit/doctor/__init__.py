"""Pre-flight checks for a run: the environment and one resolved config, before hours go into training.

    from peftkit.config import load_config
    from peftkit.doctor import run_checks
    for check in run_checks(load_config("recipes/reviews/minilm-l6_lora.yaml")):
        print(check.name, check.status, check.detail, check.fix)

Each check is a small function that returns one `Check` row (``ok``, ``warn`` or ``fail``) and never raises: a
`PeftkitError` becomes a failed row, and so does anything unexpected (``PEFTKIT_DEBUG=1`` re-raises it). Nothing
loads model weights: the base is checked from its files and config, and the method is applied to a copy of the
architecture built on PyTorch's ``meta`` device (shapes only, no memory), the same call training makes. The data,
output folder, method preflight (AdaLoRA's schedule) and segment checks reuse the functions training calls, so
doctor and train agree.

One module per group of rows: `environment` (versions, lock, device, quant), `plan` (config, run length), `model`,
`data` (data, segments), `method` (method, the method's preflight), `output` (output, disk).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from peftkit.doctor.check import FAIL, OK, WARN, Check, Facts, Status, one_line
from peftkit.doctor.data import check_data, check_segments
from peftkit.doctor.environment import (
    check_device,
    check_lock,
    check_quant,
    check_versions,
    int8_smoke_test,
)
from peftkit.doctor.method import check_method, check_preflight, preflight_name
from peftkit.doctor.model import check_model
from peftkit.doctor.output import check_disk, check_output
from peftkit.doctor.plan import check_config
from peftkit.errors import PeftkitError

if TYPE_CHECKING:
    from peftkit.config import RunConfig

__all__ = [
    "FAIL",
    "OK",
    "WARN",
    "Check",
    "Status",
    "check_lock",
    "check_quant",
    "check_versions",
    "has_failures",
    "int8_smoke_test",
    "run_checks",
]

# What a failed row's message leaves to the user, per check (a check can give a more specific one itself).
_FIXES = {
    "config": "correct the keys named above in the recipe, --set or flags; the remaining checks run once it validates",
    "model": "pass a built-in alias (minilm-l6, smollm2-135m, multilingual-e5-small, gemma3-270m), a local folder written by save_pretrained(), or a .gguf file",
    "data": "fix the file, or the data keys the message names (--data, --text-column, --template, --label-column, --labels, --task)",
    "method": "set method.target_modules to module names this architecture has, or pick another --method",
    "segments": "name an existing column with --segment-column, or fill its empty cells",
    "output": "pass --overwrite to replace it, or choose another --output",
}


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
        One `Check` per row, in a fixed order; checks that do not apply (a method preflight for a method without
        one, segments without ``segments:``) are left out.
    """
    checks = [_guard("versions", check_versions), _guard("lock", check_lock), _guard("device", check_device)]
    if isinstance(cfg_or_error, BaseException):
        checks.append(Check("config", FAIL, one_line(cfg_or_error), _FIXES["config"]))
        return checks
    from peftkit.models import default_device

    facts = Facts(cfg_or_error, overwrite, resume, device=default_device())
    # Looked up at call time, so that a check replaced on this package (tests do) is the one that runs.
    steps: list[tuple[str, Callable[[Facts], Check | None]]] = [
        ("quant", check_quant),
        ("config", lambda f: check_config(f, source)),
        ("model", check_model),
        ("data", check_data),  # before method: the head's size and the run's step count come from the rows
        ("method", check_method),
        (preflight_name(facts.cfg.method.name), check_preflight),
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
    """Whether any row failed (the run would stop or cannot start)."""
    return any(c.status == FAIL for c in checks)


def _guard(name: str, fn: Callable[[], Check | None]) -> Check | None:
    """Run one check so that nothing escapes: doctor must print every row, never a traceback."""
    try:
        with _quiet():
            return fn()
    except PeftkitError as exc:
        return Check(name, FAIL, one_line(exc), _FIXES.get(name, ""))
    except Exception as exc:
        if os.environ.get("PEFTKIT_DEBUG"):
            raise
        return Check(
            name,
            FAIL,
            f"the check itself failed: {type(exc).__name__}: {one_line(exc)}",
            "rerun with PEFTKIT_DEBUG=1 to see the traceback, and report it",
        )


@contextlib.contextmanager
def _quiet():
    # Library deprecation notes (transformers' gradient-checkpointing rename, peft's target hints) are not findings.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
