"""The one exception type users see.

A `PeftkitError` is a known, user-fixable failure: its message is one line naming the file, row, column or flag at
fault and what to do. The CLI prints it without a traceback (set ``PEFTKIT_DEBUG=1`` to see one); anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class PeftkitError(Exception):
    """A failure the user can fix; the message says how."""


class NonFiniteLossError(PeftkitError):
    """Training produced a NaN/inf loss; the run stopped before the bad step touched the weights."""
