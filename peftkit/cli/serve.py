"""``peftkit serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import command

BankOpt = Annotated[
    Path, typer.Option(help="Adapter bank folder (`peftkit bank build`, or `peftkit train --segment-column`).")
]
HostOpt = Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 for every interface.")]
PortOpt = Annotated[int, typer.Option(help="TCP port.")]
QuantOpt = Annotated[
    Optional[str], typer.Option(help="none or 8bit; default: what the adapters were trained with.")
]
MaxLoadedOpt = Annotated[
    int, typer.Option(help="Adapters kept in memory; the least recently used is evicted beyond it.")
]
PreloadOpt = Annotated[bool, typer.Option(help="Load adapters at start instead of on first request.")]
MaxItemsOpt = Annotated[int, typer.Option(help="Inputs per request; more get HTTP 413.")]
MaxBodyKbOpt = Annotated[int, typer.Option(help="Request body size limit in KiB; more get HTTP 413.")]
MaxBatchRowsOpt = Annotated[
    int, typer.Option(help="Rows answered in one batch across requests that arrive together.")
]
BatchWaitMsOpt = Annotated[
    float, typer.Option(help="How long a batch waits for more requests to join it (latency vs throughput).")
]


@command
def serve(
    bank: BankOpt,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    quant: QuantOpt = None,
    max_loaded: MaxLoadedOpt = 8,
    preload: PreloadOpt = True,
    max_items: MaxItemsOpt = 256,
    max_body_kb: MaxBodyKbOpt = 1024,
    max_batch_rows: MaxBatchRowsOpt = 64,
    batch_wait_ms: BatchWaitMsOpt = 2.0,
) -> None:
    """Serve an adapter bank over HTTP: one base model in memory, each request (or each item) answered by its
    segment's adapter. Logs one line per request to stderr.

    Endpoints: `POST /v1/score` (user records in, every question's answer out, each text built from the record as
    the question's adapter was trained), `POST /v1/predict` (finished texts, one question), `GET /v1/adapters`,
    `POST /v1/adapters` (load an adapter folder from inside the bank folder), `GET /healthz`. Unknown segments
    follow the bank's fallback or get 404 with the known segments (per-record errors in `/v1/score`).

    Example:

    ```
    peftkit serve --bank banks/reviews --port 8000
    curl -s localhost:8000/v1/predict -d '{"segment": "hotel", "inputs": ["房间很干净"]}'
    curl -s localhost:8000/v1/predict \\
        -d '{"items": [{"segment": "book", "input": "纸质很差"}, {"segment": "laptop", "input": "散热很好"}]}'
    curl -s localhost:8000/v1/score -d '{"records": [{"platform": "app", "orders_90d": 3, "last_query": "耳机"}]}'
    ```
    """
    from peftkit.errors import PeftkitError
    from peftkit.inference.bank import AdapterBank
    from peftkit.inference.serve import ServeLimits, run

    if quant not in (None, "none", "8bit"):
        raise PeftkitError(f"--quant {quant!r}: use none or 8bit")
    for flag, value in (
        ("--max-items", max_items),
        ("--max-body-kb", max_body_kb),
        ("--max-batch-rows", max_batch_rows),
    ):
        if value < 1:
            raise PeftkitError(f"{flag} must be at least 1, got {value}")
    opened = AdapterBank.open(bank, quant=quant, max_loaded=max_loaded, preload=preload)
    held = "; ".join(
        f"{name}: {len(q.adapters)} adapters, {len(q.segments)} segments, fallback {q.fallback}"
        for name, q in opened.questions.items()
    )
    typer.echo(f"peftkit: serving bank {bank} ({held}) at http://{host}:{port}", err=True)
    limits = ServeLimits(max_items, max_body_kb * 1024, max_batch_rows, batch_wait_ms)
    run(opened, host=host, port=port, limits=limits)
