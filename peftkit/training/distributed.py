"""Training under a torchrun / accelerate launch: a folder every rank builds together, and child processes that
train alone, outside the launch.

    torchrun --nproc_per_node 2 -m peftkit train --recipe reviews/minilm-l6_lora_by-platform --output banks/reviews

The launch itself (its process group, DDP) is accelerate's and Trainer's; this module only does what segment
training needs on top: ranks that agree on one temporary folder, and ranks that each train other adapters alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from peftkit.artifacts.io import atomic_folder, replace_folder
from peftkit.errors import PeftkitError
from peftkit.runtime import world_size

# What torchrun / accelerate set for a launch's processes; a child without them is a plain single process.
_LAUNCH_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
)
_PARENT_RANK = "PEFTKIT_SEGMENT_RANK"  # the rank that started a child, which has no RANK of its own


def launch_rank() -> int:
    """This process's rank in the launch; in a child of `run_outside_launch`, the rank that started it."""
    return int(os.environ.get("RANK", os.environ.get(_PARENT_RANK, "0")))


def run_outside_launch(module: str, job: dict) -> int:
    """Run ``python -m module JOB_FILE`` (`job` as JSON) in a child process that is not part of the launch;
    returns its exit code.

    A process inside a torchrun/accelerate launch cannot train alone: Trainer would wrap the model in DDP and wait
    for the other ranks, which are busy with other work. The child gets the launch variables removed and, on CUDA,
    only this rank's GPU.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(job, fh)
    try:
        # The child's chatter (Trainer prints its metrics) joins the logs on stderr: stdout carries results only.
        done = subprocess.run(
            [sys.executable, "-m", module, fh.name], env=_child_environment(), stdout=sys.stderr
        )
    finally:
        os.unlink(fh.name)
    return done.returncode


def _child_environment() -> dict[str, str]:
    """This process's environment without the launch variables, pinned to this rank's GPU on CUDA."""
    import torch

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _LAUNCH_VARIABLES and not k.startswith("TORCHELASTIC_")
    }
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        env["CUDA_VISIBLE_DEVICES"] = devices[local_rank % len(devices)]
    env[_PARENT_RANK] = str(launch_rank())  # recorded in the manifests: who trained what
    return env


@contextlib.contextmanager
def shared_atomic_folder(out: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """Yield (folder to build `out` in, barrier). One process: a temporary folder renamed onto `out` at the end.

    Under torchrun/accelerate every rank takes part, but only rank 0 writes: the ranks agree on one temporary path
    (rank 0 creates it), wait for each other at each barrier (after an adapter is written, before another rank reads
    it), and rank 0 renames the finished folder onto `out`.
    """
    world = world_size()
    if world == 1:
        with atomic_folder(out) as tmp:
            yield tmp, lambda: None
        return
    import torch
    from accelerate import PartialState

    # Joins the launch's process group as Trainer will (gloo on CPU, nccl on GPU). On a CPU machine accelerate needs
    # cpu=True to see the launch at all: without it every rank believes it is the only, main process.
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != world:
        raise PeftkitError(
            f"launched with WORLD_SIZE={world} but accelerate sees {state.num_processes} processes"
        )
    tmp = out.parent / f".{out.name}.tmp-{os.environ.get('TORCHELASTIC_RUN_ID', 'dist')}"
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    state.wait_for_everyone()
    try:
        yield tmp, state.wait_for_everyone
        state.wait_for_everyone()
        if state.is_main_process:
            replace_folder(tmp, out)
    except BaseException:
        if state.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
