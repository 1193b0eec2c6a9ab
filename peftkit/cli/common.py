"""What every command shares: error handling, quiet libraries, stdout/stderr discipline, JSON output."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import typer

from peftkit.errors import PeftkitError

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (logs stay on stderr).")
]


def command(fn: Callable) -> Callable:
    """Run a command body with quiet libraries, stdout kept for results, and known failures as one line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_libraries()
        if rank() != 0:  # under torchrun/accelerate: rank 0 alone logs, prints results and writes files
            logging.getLogger("peftkit").setLevel(logging.WARNING)
        try:
            return fn(*args, **kwargs)
        except PeftkitError as exc:
            if os.environ.get("PEFTKIT_DEBUG"):
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo(
                "interrupted; `peftkit train ... --resume` continues from the last checkpoint", err=True
            )
            raise typer.Exit(130) from None

    return wrapper


def rank() -> int:
    """This process's rank in a torchrun / accelerate launch (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def stdout_to_stderr():
    """Library chatter (Trainer's per-step logs use print/tqdm.write) must not mix with results on stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def emit(result: Any, as_json: bool, human: Callable[[], None]) -> None:
    if rank() != 0:  # one result on stdout per launch, from rank 0
        return
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    else:
        human()


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
