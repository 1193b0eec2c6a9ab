"""``peftkit evaluate``: an adapter or a bank scored on a labelled file exactly as ``peftkit predict`` scores it, and
measured per question, overall and per segment (docs/evaluate.md).

    labels.py    which questions, which label column, the labels read and checked before any model loads
    metrics.py   the task spec's metrics per group of rows, the per-class table, lift and capture
    plots.py     confusion matrix, reliability diagram, cumulative gains
    run.py       `evaluate`: score, measure, write metrics.json, predictions.csv and the plots atomically
    report.py    the terminal tables
    drift.py     `drift_report`: recent rows against each adapter's training profile (PSI per field, scores)
    drift_render.py  the drift report as a terminal table or Markdown
"""

from __future__ import annotations

from peftkit.evaluation.run import evaluate

__all__ = ["evaluate"]
