"""The ``peftkit`` command line: thin commands that parse flags, call one library function and print the result.

Results go to stdout (``--json`` for scripts); progress and logs go to stderr.
"""

from __future__ import annotations

import typer

from peftkit.cli import bank as bank_cmd
from peftkit.cli import compare as compare_cmd
from peftkit.cli import data as data_cmd
from peftkit.cli import doctor as doctor_cmd
from peftkit.cli import drift as drift_cmd
from peftkit.cli import evaluate as evaluate_cmd
from peftkit.cli import export as export_cmd
from peftkit.cli import inspect as inspect_cmd
from peftkit.cli import predict as predict_cmd
from peftkit.cli import recipes as recipes_cmd
from peftkit.cli import refresh as refresh_cmd
from peftkit.cli import serve as serve_cmd
from peftkit.cli import train as train_cmd

app = typer.Typer(
    name="peftkit",
    help="Parameter-efficient fine-tuning for e-commerce user analysis.\n\n"
    "Start with `peftkit train` (no arguments: the default recipe on the packaged model and real reviews), "
    "then `peftkit predict` and `peftkit inspect`, and `peftkit evaluate` to measure an adapter or bank on a labelled file (per segment, lift, calibration), `peftkit drift` to see how far recent rows moved from what it was trained on, `peftkit refresh` to retrain on new rows behind a no-regression gate; `peftkit bank build` puts several questions over one base into one bank, `peftkit serve` puts a bank behind HTTP; `peftkit doctor` checks a run before it starts, `peftkit export` hands LoRA adapters to vLLM/LoRAX; `peftkit compare` runs the methods side by side on the same data. Set PEFTKIT_DEBUG=1 to see tracebacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("train")(train_cmd.train)
app.command("predict")(predict_cmd.predict)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("drift")(drift_cmd.drift)
app.command("refresh")(refresh_cmd.refresh)
app.command("inspect")(inspect_cmd.inspect)
app.command("serve")(serve_cmd.serve)
app.command("export")(export_cmd.export)
app.command("doctor")(doctor_cmd.doctor)
app.command("compare")(compare_cmd.compare)
app.add_typer(recipes_cmd.app, name="recipes")
app.add_typer(data_cmd.app, name="data")
app.add_typer(bank_cmd.app, name="bank")


def main() -> None:
    app()
