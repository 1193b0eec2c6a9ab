"""The ``output`` and ``disk`` rows: the refusal training applies to the output folder, what --overwrite and
--resume would do there, and whether the disk can hold what the run writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from peftkit.doctor.check import FAIL, OK, WARN, Check, Facts
from peftkit.doctor.data import segment_adapter_rows
from peftkit.errors import PeftkitError

# Free space at the output folder's parent: an adapter is megabytes, but checkpoints, the atomic rename's temporary
# copy and a bank's many adapters add up, and a full disk kills a run at its first save, after the training time.
DISK_WARN_BYTES = 1 << 30
DISK_FAIL_BYTES = 100 << 20
# Trainer keeps this many checkpoints (peftkit.training.hf_trainer: save_total_limit=2); each holds the adapter and
# Adam's two moment tensors, so about 3x the adapter.
_KEPT_CHECKPOINTS = 2


def check_output(facts: Facts) -> Check:
    """The output folder: the same refusal training applies, plus what --overwrite and --resume would do there."""
    from peftkit.artifacts.io import output_lock_holder
    from peftkit.training.plan import checkpoint_dir, last_checkpoint
    from peftkit.training.segments import check_bank_output

    cfg, out = facts.cfg, facts.output
    if (holder := output_lock_holder(out)) is not None:
        return Check(
            "output",
            FAIL,
            f"{out} is being written by another peftkit run (pid {holder}); training would be refused",
            "wait for that run to finish or choose another --output",
        )
    if cfg.segments is not None:
        check_bank_output(out, facts.overwrite)
        if facts.resume:
            raise PeftkitError("--resume does not apply to --segment-column runs yet; rerun without --resume")
    else:
        _check_adapter_output(facts, overwrite=facts.overwrite)
    ckpt = checkpoint_dir(out)
    if facts.resume:
        last = last_checkpoint(ckpt)
        if last is None:
            raise PeftkitError(f"--resume: no checkpoint in {ckpt} to continue from; run without --resume")
        return Check("output", OK, f"{out}: --resume continues from {last.name}")
    if out.is_dir() and any(out.iterdir()):
        if cfg.segments is not None:
            what = "a bank (--overwrite)"
        elif _same_adapter(facts):
            what = "an adapter with this same config"
        else:
            what = "a different adapter (--overwrite)"
        return Check(
            "output", WARN, f"{out} holds {what}: training replaces it", "choose another --output to keep it"
        )
    if cfg.segments is None and last_checkpoint(ckpt) is not None:
        return Check(
            "output",
            WARN,
            f"{out}: an interrupted run left checkpoints in {ckpt}; this run starts from scratch",
            "pass --resume to continue the interrupted run instead",
        )
    return Check("output", OK, f"{out} will be created")


def _check_adapter_output(facts: Facts, *, overwrite: bool) -> None:
    from peftkit.artifacts.adapter_folder import check_output

    check_output(facts.output, facts.cfg.model_dump(mode="json"), overwrite=overwrite)


def _same_adapter(facts: Facts) -> bool:
    """The output already holds an adapter trained with this exact config (training replaces it without asking)."""
    try:
        _check_adapter_output(facts, overwrite=False)
    except PeftkitError:
        return False
    return True


def check_disk(facts: Facts) -> Check:
    """Free space and write permission where training writes: beside the output folder, and the model cache."""
    from peftkit.models import cache_dir

    place = _existing_ancestor(facts.output.parent)
    problem = _not_writable(place)
    if problem:
        return Check(
            "disk",
            FAIL,
            f"cannot write in {place}: {problem}",
            "choose an --output in a folder you can write to",
        )
    free = shutil.disk_usage(place).free
    need = _bytes_needed(facts)
    written = (
        f"the run writes about {_size(need)} there"
        if facts.adapter_bytes is not None
        else "the adapter size is unknown (the method check did not pass)"
    )
    detail = f"{_size(free)} free at {place}; {written}"
    if facts.conversion_bytes:
        cache_free = shutil.disk_usage(_existing_ancestor(cache_dir())).free
        detail += f"; the .gguf conversion writes about {_size(facts.conversion_bytes)} to {cache_dir()} ({_size(cache_free)} free)"
        if cache_free < facts.conversion_bytes + DISK_FAIL_BYTES:
            return Check("disk", FAIL, detail, "free space there, or point PEFTKIT_CACHE at a bigger disk")
    if free < max(DISK_FAIL_BYTES, need):
        return Check("disk", FAIL, detail, "free space, or choose an --output on another disk")
    if free < max(DISK_WARN_BYTES, 2 * need):
        return Check(
            "disk", WARN, detail, "free space before a long run; checkpoints and a bank's adapters add up"
        )
    return Check("disk", OK, detail)


def _bytes_needed(facts: Facts) -> int:
    """The adapter, its temporary copy during the atomic rename, and the kept checkpoints (adapter + Adam's moments),
    for each adapter the run trains."""
    per_run = (facts.adapter_bytes or 0) * (2 + 3 * _KEPT_CHECKPOINTS)
    return per_run * (1 + len(segment_adapter_rows(facts)))


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _not_writable(folder: Path) -> str | None:
    """Why a file cannot be created in `folder` (permissions, read-only mount), or None; tried, not guessed."""
    if not folder.is_dir():
        return "not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".peftkit-doctor-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
