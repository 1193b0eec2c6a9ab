"""Templates: how a record (a table row, a JSON object) becomes the text an adapter reads.

A template is Python ``str.format`` text over field names, with one addition: a field may say what a missing value
renders as, after a ``|``::

    "orders 90d {orders_90d|0}; last search: {last_query|none}; spend {spend|0:.2f}"

A value is missing when the record has no such key, or its value is null (``None``, NaN, an empty CSV cell). A
field with a default renders the default then (an empty default, ``{chat|}``, renders nothing); a field without one
makes the record unanswerable, and the error names the field. The default is part of the template string, so it is
saved with the adapter (``config.data.template``) and training and scoring render a record exactly alike.

The default text runs to the field's closing brace or its format spec: it cannot hold ``:``, ``!``, ``{`` or ``}``.

    template = Template.parse("orders {orders_90d|0}: {text}")
    template.render({"text": "buy now"})              # "orders 0: buy now"
    template.render({"orders_90d": 3})                # MissingField("text")

`str.format` does the rendering (numbers print as written, format specs such as ``{price:.2f}`` work on CSV cells
that hold numbers); what is written by hand here is only the default syntax, which no formatting library has.
"""

from __future__ import annotations

import contextlib
import functools
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from peftkit.errors import PeftkitError


class MissingField(PeftkitError):
    """A record has no value for a template field that has no default."""

    def __init__(self, field: str):
        super().__init__(f"field {field!r} is missing or empty and the template gives it no default")
        self.field = field


def is_missing(value: Any) -> bool:
    """None, NaN, NaT or pandas' NA: what a record lacks (an empty string is a value, rendered as nothing)."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


class Cell(str):
    """A CSV cell (always read as a string) that still accepts a numeric format spec such as ``{price:.2f}``."""

    def __format__(self, spec: str) -> str:
        try:
            return str.__format__(self, spec)
        except ValueError as error:
            for number in (int, float):
                with contextlib.suppress(ValueError):
                    return format(number(self), spec)
            raise error


@dataclass(frozen=True)
class Template:
    """A parsed template: ``text`` as written, ``format`` the same without defaults, ``fields`` each column read
    (in order of first use) with its default (None: required)."""

    text: str
    format: str
    fields: dict[str, str | None]

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def parse(text: str) -> Template:
        """Parse `text`; one line naming the template when it is not a format string or a field names no column."""
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise PeftkitError(f"--template {text!r} is not a valid format string: {exc}") from exc
        out, fields = [], {}
        for literal, name, spec, conversion in parts:
            out.append(literal.replace("{", "{{").replace("}", "}}"))
            if name is None:
                continue
            name, bar, default = name.partition("|")
            column = re.split(r"[.\[]", name, maxsplit=1)[0]
            if column == "" or column.isdigit():
                raise PeftkitError(
                    f"--template {text!r}: every field must name a column, e.g. "
                    "'orders: {orders_90d|0}; query: {last_query}'"
                )
            if column in fields and fields[column] != (default if bar else None):
                raise PeftkitError(
                    f"--template {text!r}: field {{{column}}} is given two different defaults; give it one"
                )
            fields.setdefault(column, default if bar else None)
            conv = f"!{conversion}" if conversion else ""
            out.append("{" + name + conv + (f":{spec}" if spec else "") + "}")
        if not fields:
            raise PeftkitError(
                f"--template {text!r}: every field must name a column, e.g. "
                "'orders: {orders_90d|0}; query: {last_query}'"
            )
        return Template(text, "".join(out), fields)

    @property
    def columns(self) -> list[str]:
        return list(self.fields)

    def render(self, record: Mapping[str, Any]) -> str:
        """The text for one record; `MissingField` names the first field with no value and no default.

        Raises:
            MissingField: a required field is absent or null.
            PeftkitError: formatting failed (a format spec that does not fit the value).
        """
        row = self._row(record)
        try:
            return self.format.format_map(row)
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            raise PeftkitError(f"--template {self.text!r} failed: {exc}") from exc

    def render_pieces(self, record: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        """`render`, cut where the text comes from: ``(column, rendered value)`` for each field and ``(None, text)``
        for the template's own words, in order; the texts joined are exactly what `render` returns. What per-field
        explanations (`peftkit.inference.explain`) sum token attributions over.

        Raises:
            MissingField, PeftkitError: as `render`.
        """
        row = self._row(record)
        pieces: list[tuple[str | None, str]] = []
        try:
            for literal, name, spec, conversion in string.Formatter().parse(self.format):
                if literal:
                    pieces.append((None, literal))
                if name is None:
                    continue
                field = (
                    "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                )
                pieces.append((re.split(r"[.\[]", name, maxsplit=1)[0], field.format_map(row)))
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            raise PeftkitError(f"--template {self.text!r} failed: {exc}") from exc
        return pieces

    def _row(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Each field's value for `record`, its default where missing (`MissingField` where it has none)."""
        row = {}
        for column, default in self.fields.items():
            value = record.get(column)
            if is_missing(value):
                if default is None:
                    raise MissingField(column)
                value = default
            row[column] = Cell(value) if isinstance(value, str) else value
        return row
