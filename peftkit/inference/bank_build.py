"""Writing banks: `build_bank` bundles separately trained adapters into one question's bank; `build_questions`,
`add_question` and `remove_question` make and change a bank of questions over one base (``peftkit bank``).

Every write goes through a temp folder or file and a rename (`peftkit.artifacts.io`): a bank folder is never seen
half-written, and a process killed mid-way leaves the bank as it was before or as it is after.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from peftkit.artifacts.bank_file import (
    BankEntry,
    BankFile,
    BankIndex,
    Fallback,
    QuestionEntry,
    is_adapter_name,
    is_bank,
    read_bank_file,
    read_bank_index,
)
from peftkit.artifacts.io import atomic_folder
from peftkit.artifacts.manifest import read_manifest
from peftkit.artifacts.names import BANK_FILE, GLOBAL
from peftkit.errors import PeftkitError


def build_bank(
    folder: str | Path,
    adapters: dict[str, str | Path],
    *,
    segments: dict[str, str] | None = None,
    segment_column: str | None = None,
    fallback: Fallback = "global",
) -> Path:
    """Bundle adapters trained separately into a one-question bank folder (copied in, checked against each other).

    Args:
        folder: the bank folder to write (must not exist).
        adapters: name -> adapter folder; name it ``global`` for the one that answers unknown segments.
        segments: segment value -> adapter name; default: each adapter answers the segment of its own name.
        segment_column: the column that names segments in prediction files, for ``peftkit predict --bank``.
        fallback: ``global`` or ``error`` for segments without an adapter.
    """
    folder = Path(folder)
    if folder.exists():
        raise PeftkitError(f"{folder} already exists; choose a new folder for the bank")
    if not adapters:
        raise PeftkitError("a bank needs at least one adapter")
    bad = [n for n in adapters if not is_adapter_name(n)]
    if bad:
        raise PeftkitError(
            f"adapter names {bad}: use letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    manifests = {name: read_manifest(path) for name, path in adapters.items()}
    bank = BankFile.like(
        next(iter(manifests.values())),
        segment_column=segment_column,
        fallback=fallback,
        segments=dict(segments) if segments is not None else {n: n for n in adapters if n != GLOBAL},
        adapters={},
        config=next(iter(manifests.values())).config,
    )
    for name, manifest in manifests.items():
        bank.check_compatible(manifest, Path(adapters[name]))
    unknown = sorted(set(bank.segments.values()) - set(adapters))
    if unknown:
        raise PeftkitError(
            f"segments route to {unknown}, which are not among the adapters {sorted(adapters)}"
        )
    with atomic_folder(folder) as tmp:
        for name, path in adapters.items():
            shutil.copytree(path, tmp / name)
            bank.adapters[name] = BankEntry.of(manifests[name], name)
        bank.write(tmp)
    return folder


def build_questions(folder: str | Path, questions: dict[str, str | Path]) -> Path:
    """Write a bank of questions: each question from an adapter folder (answering every segment) or from a
    one-question bank (its segments, fallback and adapters, copied as they are).

    Raises:
        PeftkitError: `folder` exists, no question is given, a name is not a valid folder name, a source is neither
            an adapter folder nor a one-question bank, or the questions do not share one base (hash, quant, dtype).
    """
    folder = Path(folder)
    if folder.exists():
        raise PeftkitError(f"{folder} already exists; choose a new folder for the bank")
    if not questions:
        raise PeftkitError("a bank needs at least one question: --question NAME=PATH")
    files = {name: question_source(Path(path)) for name, path in questions.items()}
    index = BankIndex.like(next(iter(files.values())), questions={})
    for name, file in files.items():
        index.check_question(name, file, Path(questions[name]))
    with atomic_folder(folder) as tmp:
        for name, path in questions.items():
            _write_question(Path(path), tmp / name)
            index.questions[name] = QuestionEntry(path=name)
        index.write(tmp)
    return folder


def add_question(folder: str | Path, name: str, source: str | Path) -> None:
    """Add question `name` to the bank of questions in `folder`, from an adapter folder or a one-question bank."""
    folder, source = Path(folder), Path(source)
    index = _questions_index(folder)
    if name in index.questions:
        raise PeftkitError(f"bank {folder} already has a question {name!r}; remove it first")
    index.check_question(name, question_source(source), source)
    if (folder / name).exists():
        raise PeftkitError(f"{folder / name} exists but is not a question of the bank; move it away first")
    _write_question(
        source, folder / name
    )  # a kill here leaves a folder no index names: the bank is as before
    index.questions[name] = QuestionEntry(path=name)
    index.write(folder)


def remove_question(folder: str | Path, name: str) -> None:
    """Take question `name` out of the bank of questions in `folder` and delete its folder."""
    folder = Path(folder)
    index = _questions_index(folder)
    if name not in index.questions:
        raise PeftkitError(
            f"bank {folder} has no question {name!r}; its questions: {', '.join(index.questions)}"
        )
    if len(index.questions) == 1:
        raise PeftkitError(f"{name!r} is the only question of bank {folder}; delete the folder instead")
    entry = index.questions.pop(name)
    index.write(
        folder
    )  # first the index: a kill before the folder is gone leaves an unnamed folder, never a hole
    path = folder / entry.path
    if path.resolve().is_relative_to(folder.resolve()) and path.resolve() != folder.resolve():
        shutil.rmtree(path, ignore_errors=True)


def question_source(path: Path) -> BankFile:
    """What a ``--question NAME=PATH`` source answers, as a one-question bank file (an adapter folder: a bank of
    that one adapter, answering every segment)."""
    if is_bank(path):
        index, single = read_bank_index(path)
        if not single:
            raise PeftkitError(
                f"{path} is a bank of questions ({', '.join(index.questions)}); give one question's folder, e.g. "
                f"{path / next(iter(index.questions))}"
            )
        return read_bank_file(path)
    if not path.is_dir():
        raise PeftkitError(f"{path} does not exist; give an adapter folder or a one-question bank")
    manifest = read_manifest(path)
    return BankFile.like(
        manifest,
        segment_column=None,
        fallback="global",
        segments={},
        adapters={GLOBAL: BankEntry.of(manifest, GLOBAL)},
        config=manifest.config,
    )


def _write_question(source: Path, dest: Path) -> None:
    if is_bank(source):
        with atomic_folder(dest) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
    else:
        build_bank(dest, {GLOBAL: source})


def _questions_index(folder: Path) -> BankIndex:
    index, single = read_bank_index(folder)
    if single:
        raise PeftkitError(
            f"{folder} is a one-question bank ({BANK_FILE} format 1); make a bank of questions from it first: "
            f"peftkit bank build NEW --question NAME={folder} --question ..."
        )
    return index
