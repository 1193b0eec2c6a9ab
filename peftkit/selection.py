"""Best checkpoint, not last: score the adapter on the held-out rows after every epoch and keep the best one.

The trainable weights (adapter and head, a few MB) are copied in memory at each new best and put back when training
ends, so the adapter written is the best evaluated one; the frozen base is never copied. The score is the task's
primary metric (`peftkit.tasks.TASKS`: macro-F1 for classification, mean absolute error for ordinal and regression),
computed with the decision the adapter will ship with (for two labels, the threshold fitted on those rows); ties go to
the lower held-out loss, then to the earlier epoch. The evaluations are saved in the manifest (``train.selection``).

Choosing on the held-out rows makes the figures reported on those same rows slightly optimistic; give a separate
``--eval`` file, or score a test file with ``peftkit predict``, for an unbiased figure. ``train.select_best=false``
keeps the last adapter.
"""

from __future__ import annotations

import logging

import numpy as np
from transformers import TrainerCallback

log = logging.getLogger("peftkit")


def score(task_name: str, metrics: dict[str, float], by: str | None = None) -> tuple[str, float]:
    """(metric name, value turned so that higher is better) for a task's held-out metrics: the task's primary metric,
    or metric `by` (``train.select_metric``)."""
    from peftkit.tasks import TASKS, metric

    chosen = metric(by) if by else TASKS[task_name].primary
    return chosen.name, chosen.better(metrics[chosen.name])


class KeepBest(TrainerCallback):
    """Evaluate after every epoch (and at the end); restore the best trainable weights when training ends.

    Listed before the method's own callbacks, so the weights are back before AdaLoRA cuts its pruned ranks away.
    """

    def __init__(self, model, evaluate, task_name: str, settled_step: int = 0, by: str | None = None):
        self.model = model
        self.evaluate = evaluate  # () -> (metrics, loss)
        self.task_name = task_name
        self.by = by  # the metric that picks the best (train.select_metric); None: the task's primary metric
        self.settled_step = settled_step
        self.history: list[dict] = []
        self.best: tuple | None = None
        self.best_state: dict | None = None
        self.best_step: int | None = None

    def _consider(self, state) -> None:
        if state.global_step < self.settled_step:
            return
        if self.history and self.history[-1]["step"] == state.global_step:
            return
        metrics, loss = self.evaluate()
        name, value = score(self.task_name, metrics, self.by)
        entry = {
            "step": state.global_step,
            "epoch": round(float(state.epoch or 0), 3),
            name: metrics[name],
            "loss": loss,
        }
        self.history.append(entry)
        key = (value, -loss)
        if self.best is None or key > self.best:
            self.best, self.best_step = key, state.global_step
            self.best_state = {
                n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad
            }
        log.info("held-out %s %.4f, loss %.4f at step %d", name, metrics[name], loss, state.global_step)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._consider(state)

    def on_train_end(self, args, state, control, **kwargs):
        import torch

        self._consider(state)
        if self.best_state is None or self.best_step == state.global_step:
            return
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n in self.best_state:
                    p.copy_(self.best_state[n])
        log.info(
            "kept the adapter of step %d (best held-out score), not the last (step %d)",
            self.best_step,
            state.global_step,
        )

    def summary(self) -> dict:
        return {"kept_step": self.best_step, "evaluations": self.history}


def held_out_evaluator(predictor, task, texts: list[str], labels: list, decide=None):
    """() -> (metrics, mean loss) of the model behind `predictor` on the held-out rows; leaves the model training.

    `decide` (logits, labels) -> `Decision` fits the decision the adapter would ship with at this point (its
    threshold), so an epoch is judged by the decisions it would make; None decodes with argmax."""
    import torch

    from peftkit.tasks import IDENTITY

    y = np.asarray(labels)

    def evaluate():
        was_training = predictor.model.training
        logits = predictor.logits(texts)
        if was_training:
            predictor.model.train()
        decision = decide(logits, y) if decide is not None else IDENTITY
        metrics = task.metrics(y, task.decode(logits, decision))
        loss = float(task.loss(torch.from_numpy(logits), torch.from_numpy(y)))
        return metrics, loss

    return evaluate
