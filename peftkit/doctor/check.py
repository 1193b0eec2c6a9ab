"""A doctor report's row (`Check`), its statuses, and the facts about the checked run that the checks share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from peftkit.config import RunConfig
    from peftkit.data import Splits
    from peftkit.methods import MethodContext

OK, WARN, FAIL = "ok", "warn", "fail"
Status = Literal["ok", "warn", "fail"]


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
class Facts:
    """The run being checked, and what earlier checks learnt that later ones need."""

    cfg: RunConfig
    overwrite: bool
    resume: bool
    device: str = "cpu"
    hf_config: Any = None  # the base's transformers config (model check)
    conversion_bytes: int = 0  # cache space a first-time .gguf conversion writes (model check)
    splits: Splits | None = None  # the rows as training will see them (data check)
    adapter_bytes: int | None = None  # fp32 adapter + head size (method check)
    adapted: Any = None  # the meta-device model with the method applied (method check)
    method_ctx: MethodContext | None = None  # the context the method was applied with (method check)

    @property
    def output(self) -> Path:
        return Path(self.cfg.output or self.cfg.default_output())


def one_line(exc: BaseException | str, limit: int = 400) -> str:
    """An error message on one line, cut to `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
