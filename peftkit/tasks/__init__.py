"""Tasks as one table, like methods: ``TASKS = {"classification": ..., "ordinal": ..., "regression": ...}``.

Each entry (`peftkit.tasks.base.Task`) says how many outputs the head has, its loss, how logits become labels and
probabilities (with the adapter's fitted `Decision`: calibration and threshold), its metrics, and its primary metric
with its direction. Selection of the best epoch, ``peftkit compare``'s ranking, ``inspect``, ``evaluate``, the
exported head's decoding and the CLI's headline all read the primary metric from here:

    task       primary metric        why
    classification  macro_f1 (higher)  accuracy rewards answering the majority class for every row
    ordinal    mae (lower)           one step off costs less than two
    regression mae (lower)           in the score's own units

A new task kind is a new `Task` subclass and a row here.
"""

from __future__ import annotations

from peftkit.tasks.base import DIRECTIONS, IDENTITY, Decision, Decoded, Metric, Task, metric
from peftkit.tasks.kinds import Classification, Ordinal, Regression

TASKS: dict[str, Task] = {t.name: t for t in (Classification(), Ordinal(), Regression())}

__all__ = ["DIRECTIONS", "IDENTITY", "TASKS", "Decision", "Decoded", "Metric", "Task", "metric"]
