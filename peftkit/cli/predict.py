"""``peftkit predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import Engine, JsonFlag, RayAddressOpt, command, emit, stdout_to_stderr

DataOpt = Annotated[str, typer.Option(help="Rows to answer: CSV, JSONL or Parquet.")]
AdapterOpt = Annotated[
    Optional[Path], typer.Option(help="Adapter folder written by `peftkit train` (or give --bank).")
]
BankOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Adapter bank (`peftkit bank build`, or `peftkit train --segment-column`): every question answered "
        "for every row, each row by its segment's adapter, its text built from the row as each adapter was trained."
    ),
]
QuestionsOpt = Annotated[
    Optional[str],
    typer.Option(
        help="With --bank: comma-separated questions to answer; default: every question of the bank."
    ),
]
SegmentColumnOpt = Annotated[
    Optional[str],
    typer.Option(
        help="With --bank: the column naming each row's segment; default: each question's own column."
    ),
]
SegmentOpt = Annotated[
    Optional[str], typer.Option(help="With --bank: answer every row with this segment's adapter.")
]
OutputOpt = Annotated[
    Optional[Path],
    typer.Option(help="Where to write predictions (.csv, .jsonl or .parquet); default: CSV on stdout."),
]
TextColumnOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Text column; default: the one the adapter was trained on (not with a bank of questions)."
    ),
]
TemplateOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Build the text from columns, e.g. 'orders {orders_90d|0}: {last_query|none}' ({field|default}: "
        "what an empty field renders as); default: the adapter's training template (not with a bank of questions)."
    ),
]
BaseOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Base model; default: the one in the adapter's manifest (a different base is refused)."
    ),
]
QuantOpt = Annotated[
    Optional[str], typer.Option(help="none or 8bit; default: what the adapter was trained with.")
]
BatchSizeOpt = Annotated[int, typer.Option(help="Rows per forward pass.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing --output file.")]
ExplainOpt = Annotated[
    bool,
    typer.Option(
        help="Also say why: an `explanation` column (per question `q_explanation`) listing the tokens that moved "
        "each answer most, as JSON [[token_text, attribution], ...]. The attribution is that token's share of the "
        "change in the predicted class's logit (ordinal: the sum of its logits; regression: the score) from a "
        "baseline where the text's tokens are pad tokens; positive pushes towards the answer. Where a template "
        "built the text, `explanation_fields` sums it per field. Costs ~20 forward+backward passes per row "
        "(docs/explanations.md); when stderr is a terminal the first rows are shown highlighted."
    ),
]
TopKOpt = Annotated[
    Optional[int],
    typer.Option(help="With --explain: tokens listed per row, largest |attribution| first (default 5)."),
]
ExplainStepsOpt = Annotated[
    Optional[int],
    typer.Option(
        help="With --explain: integration steps per row. More steps make a row's attributions add up more exactly "
        "to its change in output (the reported delta), at proportional cost (default 16)."
    ),
]
ExplainHtmlOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="With --explain: also write a self-contained HTML page showing every row's tokens highlighted "
        "(green: pushed the answer up, red: down)."
    ),
]


EngineOpt = Annotated[
    Engine,
    typer.Option(
        help="local: this process. ray: Ray Data, one bank per worker (`pip install 'peftkit[ray]'`); --data may "
        "be a folder or glob of CSV/Parquet partitions, --output a .parquet/.csv file or a folder of Parquet parts."
    ),
]
WorkersOpt = Annotated[
    int, typer.Option(help="With --engine ray: scoring actors, each holding the bank once.")
]
CpusPerWorkerOpt = Annotated[
    float, typer.Option(help="With --engine ray: CPUs (torch threads) per worker; one CPU stays for reading.")
]


@command
def predict(
    data: DataOpt,
    adapter: AdapterOpt = None,
    bank: BankOpt = None,
    questions: QuestionsOpt = None,
    segment_column: SegmentColumnOpt = None,
    segment: SegmentOpt = None,
    output: OutputOpt = None,
    text_column: TextColumnOpt = None,
    template: TemplateOpt = None,
    base: BaseOpt = None,
    quant: QuantOpt = None,
    batch_size: BatchSizeOpt = 64,
    engine: EngineOpt = Engine.local,
    address: RayAddressOpt = None,
    workers: WorkersOpt = 2,
    cpus_per_worker: CpusPerWorkerOpt = 1,
    overwrite: OverwriteOpt = False,
    explain: ExplainOpt = False,
    top_k: TopKOpt = None,
    explain_steps: ExplainStepsOpt = None,
    explain_html: ExplainHtmlOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Answer every row of a file with one adapter, or every question of an adapter bank for every row (each row by
    its segment's adapter). Each row's text is built from its columns as the adapter was trained (its template, with
    the template's defaults for empty fields). One output row per input row, in order: the input columns plus

    - one adapter or a one-question bank: `prediction` (label, or score for regression), one `prob_<label>` per
      class, `adapter` (which adapter answered);
    - a bank of questions: per question `q`: `q` (label or score), `q_prob_<label>` per class, `q_adapter`.

    A row that cannot be answered (a field with no value and no default) gets its reason in `error` (`q_error`) and
    the other rows are answered; the exit status is non-zero only when no row could be answered.

    Examples:

    ```
    peftkit predict --adapter runs/intent-adalora \\
        --data new.csv --output preds.csv
    peftkit predict --bank banks/reviews --data new.csv \\
        --segment-column platform --output preds.csv
    peftkit predict --bank banks/shop --data users.csv --questions intent,churn --output scores.csv
    peftkit predict --bank banks/shop --data users/ --output scores/ --engine ray --address auto --workers 16
    peftkit predict --adapter runs/intent-adalora --data new.csv --output preds.csv \\
        --explain --top-k 3 --explain-html why.html
    ```
    """
    from peftkit.data import check_writable
    from peftkit.errors import PeftkitError
    from peftkit.inference.table import TextSpec, predict_table, write_predictions

    if (adapter is None) == (bank is None):
        raise PeftkitError("give exactly one of --adapter (one adapter) or --bank (an adapter bank)")
    if adapter is not None and (segment_column or segment or questions):
        raise PeftkitError(
            "--segment-column, --segment and --questions need --bank; --adapter answers every row itself"
        )
    if segment_column and segment:
        raise PeftkitError(
            "give --segment-column (a segment per row) or --segment (one for all rows), not both"
        )
    if quant not in (None, "none", "8bit"):
        raise PeftkitError(f"--quant {quant!r}: use none or 8bit")
    questions_list = [q.strip() for q in questions.split(",") if q.strip()] if questions else None
    options = _explain_options(explain, top_k, explain_steps, explain_html, engine)
    if engine is Engine.ray:
        if output is None:
            raise PeftkitError(
                "--engine ray writes files: give --output (a .parquet or .csv file, or a folder)"
            )
        from peftkit.inference.ray_data import predict_ray

        summary = predict_ray(
            data, output, address=address, workers=workers, cpus_per_worker=cpus_per_worker, overwrite=overwrite,
            bank=bank, adapter=adapter, questions=questions_list, segment_column=segment_column, segment=segment,
            text_column=text_column, template=template, base=base, quant=quant, batch_size=batch_size,
        )  # fmt: skip
        emit(summary, json_, lambda: typer.echo(f"wrote {summary['rows']} predictions to {output}"))
        return
    if output is not None:
        check_writable(output, overwrite=overwrite)
    with stdout_to_stderr():
        result = predict_table(
            data,
            adapter=adapter,
            bank=bank,
            questions=questions_list,
            segment_column=segment_column,
            segment=segment,
            text=TextSpec(text_column, template),
            base=base,
            quant=quant,
            batch_size=batch_size,
            explain=options,
        )
    if options is not None:
        from peftkit.inference.explain_render import report

        typer.echo(report(result, options, explain_html), err=True)
    if output is None:
        typer.echo(result.frame.to_csv(index=False), nl=False)
        return
    summary = write_predictions(result, output)
    failed = f" ({result.failed_rows} with errors: see the error columns)" if result.failed_rows else ""
    emit(summary, json_, lambda: typer.echo(f"wrote {summary['rows']} predictions to {output}{failed}"))


def _explain_options(explain: bool, top_k: int | None, steps: int | None, html: Path | None, engine: Engine):
    """The `ExplainOptions` of --explain (None without it); its flags without it, or with Ray, are refused."""
    from peftkit.errors import PeftkitError

    if not explain:
        if html is not None or top_k is not None or steps is not None:
            raise PeftkitError("--top-k, --explain-steps and --explain-html need --explain")
        return None
    if engine is Engine.ray:
        raise PeftkitError("--explain runs with --engine local only; explain a sample of the rows locally")
    from peftkit.inference.explain import DEFAULT_STEPS, DEFAULT_TOP_K, ExplainOptions

    return ExplainOptions(
        DEFAULT_TOP_K if top_k is None else top_k, DEFAULT_STEPS if steps is None else steps
    )
