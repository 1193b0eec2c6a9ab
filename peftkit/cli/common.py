"""What every command shares: error handling, stdout/stderr discipline, JSON output."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, Optional

import typer

from peftkit.errors import PeftkitError
from peftkit.runtime import quiet_libraries, rank

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (logs stay on stderr).")
]


class Engine(str, Enum):
    """Where `predict` and `serve` run: this process, or a Ray cluster."""

    local = "local"
    ray = "ray"


RayAddressOpt = Annotated[
    Optional[str],
    typer.Option(
        "--address",
        help="With --engine ray: the cluster (host:port, ray://host:port, auto); default: a local Ray.",
    ),
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
