"""``peftkit bank build | add | remove``: banks of questions over one base; ``history | promote | rollback | canary |
prune | canary-report``: adapter versions (`peftkit.artifacts.versions`, docs/versions.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

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


# -- versions ---------------------------------------------------------------------------------------------------------

QuestionOpt = Annotated[
    Optional[str],
    typer.Option(
        "--question",
        "-q",
        help="The question whose adapters to act on, in a bank of several questions; leave it out for a "
        "one-question bank.",
    ),
]
ReasonOpt = Annotated[
    str, typer.Option(help="Why, in words; kept in the question's history.jsonl beside who and when.")
]
VersionArg = Annotated[
    str, typer.Argument(help="ADAPTER@vN: an adapter of the question and one of its versions, e.g. hotel@v3.")
]


def _version(value: str) -> tuple[str, int]:
    from peftkit.artifacts.versions import parse_key
    from peftkit.errors import PeftkitError

    name, number = parse_key(value)
    if number is None:
        raise PeftkitError(
            f"{value!r}: write ADAPTER@vN, e.g. hotel@v3 (`peftkit bank history` lists versions)"
        )
    return name, number


def _folder(bank: Path, question: str | None) -> Path:
    from peftkit.artifacts.versions import question_folder

    return question_folder(bank, question)


@app.command("history")
@command
def history_(bank: BankArg, question: QuestionOpt = None, json_: JsonFlag = False) -> None:
    """Every move of a question's version pointers, oldest first: when, who, what, from and to which version, why.

    ```
    peftkit bank history banks/shop --question intent
    ```
    """
    from peftkit.artifacts.versions import history

    records = history(_folder(bank, question))
    emit(records, json_, lambda: _history_table(records))


def _history_table(records: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("time (UTC)", "user", "action", "adapter", "from", "to", "reason")
    for r in records:
        version = [f"v{r[k]}" if r[k] is not None else "" for k in ("from", "to")]
        table.add_row(r["time"], r["user"], r["action"], r["adapter"], *version, r.get("reason", ""))
    Console(width=160).print(table)


@app.command("add-version")
@command
def add_version_(
    bank: BankArg,
    adapter: Annotated[str, typer.Argument(help="The adapter of the question that gets a new version.")],
    source: Annotated[
        Path, typer.Argument(help="An adapter folder (`peftkit train`) compatible with the bank.")
    ],
    question: QuestionOpt = None,
    reason: ReasonOpt = "",
    json_: JsonFlag = False,
) -> None:
    """Copy an adapter folder in as an adapter's next version (checked against the bank); it is not promoted.

    ```
    peftkit bank add-version banks/shop hotel runs/hotel-march --question intent --reason "March data"
    ```
    """
    from peftkit.artifacts.versions import add_version

    number = add_version(_folder(bank, question), adapter, source, reason=reason)
    emit({"adapter": adapter, "version": number}, json_, lambda: typer.echo(f"added {adapter}@v{number}"))


@app.command("promote")
@command
def promote_(
    bank: BankArg,
    version: VersionArg,
    question: QuestionOpt = None,
    reason: ReasonOpt = "",
    json_: JsonFlag = False,
) -> None:
    """Put a version of an adapter in production: one atomic rewrite of bank.json, recorded in the history. A
    running `peftkit serve` follows within its --reload-interval-s (or at POST /v1/reload).

    ```
    peftkit bank promote banks/shop hotel@v3 --question intent --reason "retrained on March data"
    ```
    """
    from peftkit.artifacts.versions import production, promote

    folder = _folder(bank, question)
    name, number = _version(version)
    before = production(folder, name)
    promote(folder, name, number, reason=reason)
    result = {"adapter": name, "from": before, "to": number}
    emit(result, json_, lambda: typer.echo(f"{name}: v{before} -> v{number} in production ({folder})"))


@app.command("rollback")
@command
def rollback_(
    bank: BankArg,
    adapter: Annotated[Optional[str], typer.Argument(help="The adapter to roll back; or --all.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Roll back every adapter that was promoted.")] = False,
    question: QuestionOpt = None,
    reason: ReasonOpt = "",
    json_: JsonFlag = False,
) -> None:
    """Put back the version that was in production before the last promote (again: the one before that).

    ```
    peftkit bank rollback banks/shop hotel --question intent --reason "conversion dropped"
    peftkit bank rollback banks/shop --all --question intent
    ```
    """
    from peftkit.artifacts.versions import rollback
    from peftkit.errors import PeftkitError

    if (adapter is None) == (not all_):
        raise PeftkitError("name the ADAPTER to roll back, or give --all (not both)")
    moved = rollback(_folder(bank, question), adapter, reason=reason)
    lines = "\n".join(f"{n}: v{a} -> v{b} in production" for n, (a, b) in moved.items())
    emit({n: {"from": a, "to": b} for n, (a, b) in moved.items()}, json_, lambda: typer.echo(lines))


@app.command("canary")
@command
def canary_(
    bank: BankArg,
    version: Annotated[
        Optional[str],
        typer.Argument(help="ADAPTER@vN to try on a share of the traffic; with --off: ADAPTER."),
    ] = None,
    share: Annotated[
        Optional[float], typer.Option(help="Fraction of the keys the canary answers, e.g. 0.1 for 10%.")
    ] = None,
    key_column: Annotated[
        Optional[str],
        typer.Option(
            help="Record field whose value picks the canary's records (a stable sha256 of it, so one user always "
            "gets the same version); records without it get production."
        ),
    ] = None,
    off: Annotated[
        bool, typer.Option("--off", help="End the adapter's canary: production answers all.")
    ] = False,
    question: QuestionOpt = None,
    reason: ReasonOpt = "",
    json_: JsonFlag = False,
) -> None:
    """Answer a share of an adapter's records with another version, chosen by a record key; compare the two live
    with `peftkit bank canary-report`, then promote it or end it with --off.

    ```
    peftkit bank canary banks/shop hotel@v4 --share 0.1 --key-column user_id --question intent
    peftkit bank canary banks/shop hotel --off --question intent
    ```
    """
    from peftkit.artifacts.versions import clear_canary, set_canary
    from peftkit.errors import PeftkitError

    folder = _folder(bank, question)
    if version is None:
        raise PeftkitError("give ADAPTER@vN (or ADAPTER --off)")
    if off:
        name = version.split("@")[0]
        clear_canary(folder, name, reason=reason)
        emit({"adapter": name, "canary": None}, json_, lambda: typer.echo(f"{name}: canary off"))
        return
    if share is None or key_column is None:
        raise PeftkitError("a canary needs --share (e.g. 0.1) and --key-column (e.g. user_id)")
    name, number = _version(version)
    set_canary(folder, name, number, share=share, key_column=key_column, reason=reason)
    emit(
        {"adapter": name, "canary": number, "share": share, "key_column": key_column},
        json_,
        lambda: typer.echo(f"{name}: v{number} answers {share:.0%} of the records by {key_column}"),
    )


@app.command("prune")
@command
def prune_(
    bank: BankArg,
    keep: Annotated[int, typer.Option(help="Versions kept per adapter, newest first (at least 1).")],
    question: QuestionOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Delete old versions beyond the newest --keep per adapter; never the production or canary version, nor the
    --keep versions the next rollbacks go back to. Every question of the bank without --question.

    ```
    peftkit bank prune banks/shop --keep 3
    ```
    """
    from peftkit.artifacts.bank_file import read_bank_index
    from peftkit.artifacts.versions import prune

    index, single = read_bank_index(bank)
    folders = (
        [_folder(bank, question)] if single or question else [bank / q.path for q in index.questions.values()]
    )
    removed = {str(f): prune(f, keep) for f in folders}
    lines = [f"{f}: {a} " + ", ".join(f"v{v}" for v in vs) for f, r in removed.items() for a, vs in r.items()]
    emit(
        removed, json_, lambda: typer.echo("\n".join(["deleted:", *lines]) if lines else "nothing to delete")
    )


@app.command("canary-report")
@command
def canary_report(
    url: Annotated[
        Optional[str],
        typer.Option(help="A running `peftkit serve`, e.g. http://127.0.0.1:8000 (reads /metrics)."),
    ] = None,
    metrics_file: Annotated[
        Optional[Path], typer.Option(help="A saved /metrics scrape to read instead of --url.")
    ] = None,
    api_key: Annotated[
        Optional[str],
        typer.Option(envvar="PEFTKIT_API_KEY", help="A score or admin key, where the server has keys."),
    ] = None,
    question: QuestionOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Production against canary, live: each version's answer count and mean score, and how far the canary's score
    distribution is from production's (PSI: under 0.1 stable, above 0.25 a large shift; KS: largest gap of the
    cumulative shares).

    ```
    peftkit bank canary-report --url http://127.0.0.1:8000 --question intent
    ```
    """
    from peftkit.errors import PeftkitError
    from peftkit.inference.metrics import compare_versions

    if (url is None) == (metrics_file is None):
        raise PeftkitError("give --url of a running peftkit serve, or --metrics-file of a saved scrape")
    text = metrics_file.read_text(encoding="utf-8") if metrics_file is not None else _scrape(url, api_key)
    rows = compare_versions(text, question)
    emit(rows, json_, lambda: _report_table(rows))


def _scrape(url: str, api_key: str | None) -> str:
    import urllib.error
    import urllib.request

    from peftkit.errors import PeftkitError

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url.rstrip("/") + "/metrics", headers=headers), timeout=30
        ) as r:
            return r.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        raise PeftkitError(
            f"--url {url}: /metrics answered {exc.code}; give --api-key where the server has keys"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise PeftkitError(f"--url {url}: cannot reach it ({exc}); is peftkit serve running there?") from None


def _report_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        typer.echo("no canary is answering (none set, or no traffic yet)")
        return
    table = Table("question", "adapter", "production", "n", "mean", "canary", "n", "mean", "PSI", "KS")

    def fmt(v):
        return "" if v is None else f"{v:.3f}"

    for r in rows:
        table.add_row(
            r["question"], r["adapter"], r["production"], str(r["production_count"]), fmt(r["production_mean"]),
            r["canary"], str(r["canary_count"]), fmt(r["canary_mean"]), fmt(r["psi"]), fmt(r["ks"]),
        )  # fmt: skip
    Console(width=160).print(table)
