"""The data layer: files and the packaged reviews in, deduplicated train/eval texts and labels out.

    from peftkit.data import load_splits
    splits = load_splits(config.data, task="classification", seed=42)
    splits.train_texts[:2], splits.train_labels[:2], splits.labels, splits.stats

`read_table` reads one file (CSV, JSONL/JSON, Parquet) or a packaged dataset (`BUILTIN_DATASETS`: the Chinese
reviews, the CDNOW customers of `cdnow`, the Amazon sentences of `amazon`; or ``builtin:synth/<task>``);
`reviews_frame` is the packaged real reviews; `build_texts` turns rows into texts; `load_splits` does all of it and
splits.
"""

from __future__ import annotations

from peftkit.data.builtin import reviews_frame
from peftkit.data.files import (
    BUILTIN_DATASETS,
    BUILTIN_REVIEWS,
    BUILTIN_SYNTH,
    build_texts,
    check_writable,
    read_table,
    write_table,
)
from peftkit.data.splits import TASKS, Splits, load_splits

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_REVIEWS",
    "BUILTIN_SYNTH",
    "TASKS",
    "Splits",
    "build_texts",
    "check_writable",
    "load_splits",
    "read_table",
    "reviews_frame",
    "write_table",
]
