"""``peftkit bank build | add | remove``: banks of questions over one base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from peftkit.cli.common import JsonFlag, command, emit

app = typer.Typer(
    help="Make and change a bank of questions: one base model in memory answering several questions (purchase "
    "intent, churn, value tier...), each from its own adapters, for every user record. `peftkit predict --bank` and "
    "`peftkit serve --bank` score records with it; `peftkit inspect` lists it.",
    no_args_is_help=True,
)

BankArg = Annotated[Path, typer.Argument(help="The bank folder.")]
QuestionsOpt = Annotated[
    list[str],
    typer.Option(
        "--question",
        "-q",
        help="NAME=PATH, repeatable: question NAME answered by PATH, an adapter folder (`peftkit train`; it "
        "answers every segment) or a one-question bank (`peftkit train --segment-column`; its segments and "
        "fallback kept). Every question must be trained on the same base (weights hash), quant and dtype.",
    ),
]


def _pairs(values: list[str]) -> dict[str, Path]:
    from peftkit.errors import PeftkitError

    pairs: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise PeftkitError(f"--question {value!r}: write NAME=PATH, e.g. --question churn=runs/churn")
        if name in pairs:
            raise PeftkitError(f"--question {name!r} is given twice; one folder per question")
        pairs[name] = Path(path)
    return pairs


@app.command("build")
@command
def build(out: BankArg, question: QuestionsOpt, json_: JsonFlag = False) -> None:
    """Write a new bank of questions to OUT from adapter folders and one-question banks (copied in).

    ```
    peftkit bank build banks/shop --question intent=runs/intent --question churn=banks/churn-by-platform \\
        --question value=runs/value-bottleneck
    peftkit predict --bank banks/shop --data users.csv --output scores.csv
    ```
    """
    from peftkit.inference.bank_build import build_questions

    pairs = _pairs(question)
    build_questions(out, pairs)
    result = {"bank": str(out), "questions": {n: str(p) for n, p in pairs.items()}}
    emit(result, json_, lambda: typer.echo(f"wrote bank {out} with questions {', '.join(pairs)}"))


@app.command("add")
@command
def add(bank: BankArg, question: QuestionsOpt, json_: JsonFlag = False) -> None:
    """Add questions to a bank of questions, one NAME=PATH at a time (each checked against the bank's base).

    A running `peftkit serve` keeps what it opened: restart it to serve the new question.

    ```
    peftkit bank add banks/shop --question conversion=runs/conversion
    ```
    """
    from peftkit.inference.bank_build import add_question

    pairs = _pairs(question)
    for name, path in pairs.items():
        add_question(bank, name, path)
    emit(
        {"bank": str(bank), "added": list(pairs)},
        json_,
        lambda: typer.echo(f"added {', '.join(pairs)} to {bank}"),
    )


@app.command("remove")
@command
def remove(
    bank: BankArg,
    question: Annotated[
        list[str], typer.Option("--question", "-q", help="Question name to remove, repeatable.")
    ],
    json_: JsonFlag = False,
) -> None:
    """Remove questions from a bank of questions (their folders are deleted).

    ```
    peftkit bank remove banks/shop --question conversion
    ```
    """
    from peftkit.inference.bank_build import remove_question

    for name in question:
        remove_question(bank, name)
    emit(
        {"bank": str(bank), "removed": question},
        json_,
        lambda: typer.echo(f"removed {', '.join(question)} from {bank}"),
    )
