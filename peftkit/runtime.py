"""The process peftkit runs in: its place in a distributed launch, and quiet third-party libraries.

Read by commands, training and the compare worker alike, so the launch variables are read here and nowhere else.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings


def rank() -> int:
    """This process's rank in a torchrun / accelerate launch (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes the launch has (1 when not distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test runners and redirections swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def quiet_libraries() -> None:
    """Libraries at warning level and without their progress bars; peftkit's own steps as plain lines on stderr."""
    peftkit_log = logging.getLogger("peftkit")
    if not peftkit_log.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("peftkit: %(message)s"))
        peftkit_log.addHandler(handler)
        peftkit_log.setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in ("bitsandbytes", "transformers.modeling_utils", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # Through the libraries' own environment variables, read when they are first imported: importing them here
    # would add ~1.7 s to commands that load no model (`recipes ls`, `inspect`, `--help` paths).
    for var, value in (
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DATASETS_VERBOSITY", "error"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
    ):
        os.environ.setdefault(var, value)
    if "transformers" in sys.modules:  # already imported (embedding code, tests): the variables came too late
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
