"""Batch scoring on Ray Data: ``peftkit predict --engine ray``, the same rows as ``peftkit predict`` on a cluster.

    ds = read_rows("users/")                                   # CSV or Parquet: a file, a folder or a glob
    scored = score_dataset(ds, bank="banks/shop", workers=8)   # a lazy Dataset: drop it into your own pipeline
    predict_ray("users/", "scores/", bank="banks/shop", workers=8, address="auto")   # what the CLI runs

Each worker is a Ray actor that opens the bank once (one base per actor) and answers batches with
`peftkit.inference.table.predict_frame`, the function ``peftkit predict`` runs on the whole file, so every row gets
the same columns and answers. Two differences, both so that batches share one schema: CSV cells are read as
strings exactly as `peftkit.data.read_table` reads them (Ray's own CSV reader would guess types), and the error
column(s) are always there, empty where the row was answered (``peftkit predict`` writes them only when some row
failed). Rows come out in input order (``preserve_order``). A worker whose process dies is restarted and its batch
answered again (Ray Data's actor pools restart
actors and retry their tasks by default); a batch's rows are emitted only when the batch completes,
so nothing is lost or written twice.
"""

from __future__ import annotations

import csv
import glob
import os
import socket
import time
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError

INSTALL = "pip install 'peftkit[ray]'"
_SUFFIXES = {".csv": "csv", ".parquet": "parquet"}


def require_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise PeftkitError(f"--engine ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None, timeout_s: float = 5.0) -> None:
    """Join the Ray cluster at `address` (``host:port``, ``ray://host:port`` or ``auto``), or start a local one.

    An address that does not answer within `timeout_s` is a one-line error, not a hang.
    """
    ray = require_ray()
    if address and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if not port.isdigit():
            raise PeftkitError(
                f"--address {address!r}: give host:port (e.g. 10.0.0.5:6379), ray://host:port or auto"
            )
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
        except OSError as exc:
            raise PeftkitError(
                f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with `ray start --head` "
                "or check the address"
            ) from None
    if ray.is_initialized():  # a pipeline of the caller's, already connected
        return
    try:
        ray.init(
            address=address
            or "local",  # without an address a new local Ray, not one `ray start` left running
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    except ConnectionError as exc:
        raise PeftkitError(f"could not join a Ray cluster at {address}: {exc}".splitlines()[0]) from None


def input_files(data: str | list[str]) -> tuple[list[str], str]:
    """The files of `data` (a file, a folder of partitions or a glob; in name order) and their kind (csv/parquet)."""
    if isinstance(data, list):
        files = [str(f) for f in data]
    elif Path(data).is_dir():
        files = sorted(str(f) for f in Path(data).iterdir() if f.suffix.lower() in _SUFFIXES)
    elif any(c in data for c in "*?["):
        files = sorted(glob.glob(data))
    else:
        files = [data]
    if not files:
        raise PeftkitError(f"no .csv or .parquet files in {data}")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise PeftkitError(f"data file {missing[0]} does not exist; check the path")
    kinds = {_SUFFIXES.get(Path(f).suffix.lower()) for f in files}
    if None in kinds or len(kinds) > 1:
        raise PeftkitError(
            f"{data}: --engine ray reads .csv or .parquet files, all of one kind; got "
            f"{', '.join(sorted({Path(f).suffix or '(none)' for f in files}))}"
        )
    return files, kinds.pop()


def read_rows(data: str | list[str]):
    """A Ray Dataset of the rows of `data`: CSV cells as strings ("007" stays "007", an empty cell is missing), as
    `peftkit.data.read_table` reads them; Parquet columns as stored."""
    ray = require_ray()
    files, kind = input_files(data)
    if kind == "parquet":
        return ray.data.read_parquet(files)
    import pyarrow as pa
    from pyarrow import csv as pacsv

    columns: dict[str, None] = {}
    for file in files:
        with open(file, newline="", encoding="utf-8-sig") as f:
            columns.update(dict.fromkeys(next(csv.reader(f), [])))
    return ray.data.read_csv(
        files,
        parse_options=pacsv.ParseOptions(newlines_in_values=True),  # quoted reviews may span lines
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )


class BankScorer:
    """The Ray Data actor: opens the bank (or adapter) once, then answers batches of rows (Arrow tables)."""

    def __init__(self, options: dict[str, Any]):
        from peftkit.inference.table import TextSpec, open_model

        self.options = options
        self.text = TextSpec(options.get("text_column"), options.get("template"))
        self.model = open_model(
            adapter=options.get("adapter"),
            bank=options.get("bank"),
            base=options.get("base"),
            quant=options.get("quant"),
            batch_size=options.get("batch_size", 64),
        )
        self.columns = answer_schema(self.model, options.get("questions"), self.text.given)

    def __call__(self, batch):
        import pyarrow as pa

        from peftkit.inference.table import predict_frame

        o = self.options
        result = predict_frame(
            batch.to_pandas(),
            self.model,
            source=str(o.get("source", "batch")),
            questions=o.get("questions"),
            segment_column=o.get("segment_column"),
            segment=o.get("segment"),
            text=self.text,
            strict=False,
        ).frame
        for name, kind in self.columns.items():
            values = result[name] if name in result else [None] * len(result)
            batch = batch.append_column(name, pa.array(values, type=kind, from_pandas=True))
        return batch


def answer_schema(model, questions: list[str] | None, text_given: bool) -> dict[str, Any]:
    """The answer columns `predict_frame` adds, in its order, with their Arrow types; error columns always."""
    import pyarrow as pa

    from peftkit.inference.bank import AdapterBank

    def columns(prefix: str, labels: list[str] | None, first: str) -> dict[str, Any]:
        out = {first: pa.string() if labels else pa.float64()}
        out.update({f"{prefix}prob_{label}": pa.float64() for label in labels or []})
        return {**out, f"{prefix}adapter": pa.string(), f"{prefix}error": pa.string()}

    if not isinstance(model, AdapterBank) or model.single or text_given:
        return columns("", model.labels, "prediction")
    out: dict[str, Any] = {}
    for name in model.question_names(questions):
        out.update(columns(f"{name}_", model.questions[name].labels, name))
    return out


def score_dataset(
    ds,
    *,
    bank: str | Path | None = None,
    adapter: str | Path | None = None,
    questions: list[str] | None = None,
    segment_column: str | None = None,
    segment: str | None = None,
    text_column: str | None = None,
    template: str | None = None,
    base: str | None = None,
    quant: str | None = None,
    batch_size: int = 64,
    rows_per_batch: int = 512,
    workers: int = 2,
    cpus_per_worker: float = 1,
    scorer: type = BankScorer,
):
    """`ds` with the answer columns added by a pool of `workers` actors, each holding the bank once: a lazy Dataset
    to write or to go on with in your own pipeline. Rows keep their order.

    Args:
        ds: the rows, e.g. from `read_rows` (CSV cells as strings, as ``peftkit predict`` reads them).
        bank, adapter, questions, segment_column, segment, text_column, template, base, quant, batch_size: as for
            ``peftkit predict``.
        rows_per_batch: rows a worker answers per call (a Ray Data batch; `batch_size` rows per forward pass).
        workers: actors in the pool; each loads the base once.
        cpus_per_worker: CPUs Ray reserves per actor (torch uses that many threads).
        scorer: the actor class (a `BankScorer`); tests pass one that dies mid-run.
    """
    ray = require_ray()
    if (adapter is None) == (bank is None):
        raise PeftkitError("give exactly one of adapter= or bank=")
    if workers < 1:
        raise PeftkitError(f"--workers must be at least 1, got {workers}")
    ds.context.execution_options.preserve_order = True  # the context `ds` was made with: rows in input order
    options = {
        "bank": str(Path(bank).resolve()) if bank is not None else None,
        "adapter": str(Path(adapter).resolve()) if adapter is not None else None,
        "questions": questions,
        "segment_column": segment_column,
        "segment": segment,
        "text_column": text_column,
        "template": template,
        "base": base,
        "quant": quant,
        "batch_size": batch_size,
    }
    threads = max(1, int(cpus_per_worker))
    # blocks of one batch each, so every worker gets work even from one file (streaming, order kept)
    ds = ds.repartition(target_num_rows_per_block=rows_per_batch)
    return ds.map_batches(
        scorer,
        fn_constructor_args=(options,),
        batch_size=rows_per_batch,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
        # A worker whose process dies comes back and its batch is answered again (nothing lost, nothing twice):
        # Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1 (tests/test_ray.py holds it).
        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}},
    )


def predict_ray(
    data: str | list[str],
    output: str | Path,
    *,
    address: str | None = None,
    workers: int = 2,
    num_cpus: int | None = None,
    rows_per_file: int = 1_000_000,
    overwrite: bool = False,
    **score_options: Any,
) -> dict[str, Any]:
    """``peftkit predict --engine ray``: score `data` on the Ray cluster at `address` (default: a local one) and
    write `output`, one ``.parquet`` or ``.csv`` file, or a folder of Parquet partitions (``part-00000.parquet``...,
    `rows_per_file` rows each, in input order). Returns the summary ``peftkit predict --json`` prints.
    """
    from peftkit.artifacts.io import atomic_path

    output = Path(output)
    single = output.suffix.lower() in (".parquet", ".csv")
    if single and output.exists() and not overwrite:
        raise PeftkitError(f"--output {output} exists; pass --overwrite to replace it")
    if not single and output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise PeftkitError(f"--output {output} exists and is not an empty folder; choose another path")
    files, _ = input_files(data)
    cpus = score_options.get("cpus_per_worker", 1)
    # a local Ray: one CPU per worker, and one for the tasks that read the files
    connect(address, num_cpus=num_cpus or int(workers * cpus) + 1)
    _check_room(workers, cpus)
    started = time.perf_counter()
    scored = score_dataset(read_rows(files), workers=workers, **score_options)
    batches = scored.iter_batches(batch_format="pyarrow", batch_size=None)
    if single:
        with atomic_path(output) as tmp:
            rows, adapters, failed = _write_one(batches, Path(tmp), output.suffix.lower())
    else:
        rows, adapters, failed = _write_parts(batches, output, rows_per_file)
    if rows and not adapters:
        raise PeftkitError(f"{data}: no row could be answered; see the error columns in {output}")
    summary: dict[str, Any] = {
        "output": str(output),
        "rows": rows,
        "files": len(files),
        "answered_by": adapters,
    }
    if failed:
        summary["rows_with_errors"] = failed
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _check_room(workers: int, cpus: float) -> None:
    """Refuse a pool that would take every CPU: the read tasks would then never run, and the job would hang."""
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    if workers * cpus + 1 > total:
        raise PeftkitError(
            f"{workers} workers x {cpus} CPUs leave no CPU of the cluster's {total:g} for reading the input; "
            "use fewer --workers or --cpus-per-worker"
        )


def _write_one(batches, tmp: Path, suffix: str) -> tuple[int, dict[str, int], int]:
    import pyarrow.parquet as pq

    rows, adapters, failed, writer = 0, {}, 0, None
    with open(tmp, "wb") as f:
        for batch in batches:
            if suffix == ".csv":
                batch.to_pandas().to_csv(f, header=writer is None, index=False)
                writer = True
            else:
                writer = writer or pq.ParquetWriter(f, batch.schema)
                writer.write_table(batch)
            rows, failed = rows + batch.num_rows, failed + _count(batch, adapters)
        if writer not in (None, True):
            writer.close()
    return rows, adapters, failed


def _write_parts(batches, folder: Path, rows_per_file: int) -> tuple[int, dict[str, int], int]:
    """Parquet partitions written in input order into a temporary folder, renamed into place when complete."""
    import shutil

    import pyarrow.parquet as pq

    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows, adapters, failed, writer, in_file, part = 0, {}, 0, None, 0, 0
    for batch in batches:
        if writer is None or in_file >= rows_per_file:
            if writer is not None:
                writer.close()
            writer, in_file, part = (
                pq.ParquetWriter(tmp / f"part-{part:05d}.parquet", batch.schema),
                0,
                part + 1,
            )
        writer.write_table(batch)
        in_file += batch.num_rows
        rows, failed = rows + batch.num_rows, failed + _count(batch, adapters)
    if writer is not None:
        writer.close()
    if folder.exists():
        folder.rmdir()  # checked empty above
    tmp.rename(folder)
    return rows, adapters, failed


def _count(batch, adapters: dict[str, int]) -> int:
    """Add the batch's answering adapters (per question) to `adapters`; return its rows with some error."""
    import pyarrow.compute as pc

    errors = None
    for name in batch.column_names:
        if name == "adapter" or name.endswith("_adapter"):
            question = name.removesuffix("adapter").removesuffix("_")
            error = batch.column(f"{question}_error" if question else "error")
            answered = pc.filter(batch.column(name), pc.is_null(error))
            for value, n in zip(*_value_counts(answered)):
                key = f"{question}/{value}" if question else value
                adapters[key] = adapters.get(key, 0) + n
            errors = pc.is_valid(error) if errors is None else pc.or_(errors, pc.is_valid(error))
    return 0 if errors is None else pc.sum(errors).as_py() or 0


def _value_counts(column) -> tuple[list, list]:
    counts = column.value_counts()
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()
