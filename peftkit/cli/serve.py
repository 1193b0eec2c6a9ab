"""``peftkit serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import Engine, RayAddressOpt, command

BankOpt = Annotated[
    Path,
    typer.Option(help="Adapter bank folder (`peftkit bank build`, or `peftkit train --segment-column`)."),
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
ApiKeysOpt = Annotated[
    Optional[Path],
    typer.Option(
        envvar="PEFTKIT_API_KEYS",
        help="File of API keys, one 'SCOPE KEY' per line (scopes: score, admin; keys of 16+ characters). Clients "
        "send 'Authorization: Bearer KEY': scoring needs score or admin, POST /v1/adapters needs admin; "
        "/healthz stays open. Also from the environment variable PEFTKIT_API_KEYS naming the file.",
    ),
]
NoAuthOpt = Annotated[
    bool,
    typer.Option(
        "--no-auth",
        help="Serve a non-loopback --host without API keys (only behind a gateway that checks them).",
    ),
]
AllowedHostOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--allowed-host",
        help="A name clients reach the server by, repeatable ('*': any). Other Host headers get 403, which stops "
        "DNS-rebinding pages. Default: localhost, 127.0.0.1, ::1 and --host itself.",
    ),
]
BodyTimeoutOpt = Annotated[
    float, typer.Option(help="Seconds to wait for the next piece of a request body before answering 408.")
]


ReloadOpt = Annotated[
    float,
    typer.Option(
        help="Seconds between looks at the bank's bank.json files for promotions, rollbacks and canaries "
        "(`peftkit bank promote|rollback|canary`), followed without a restart; 0: never look (POST /v1/reload "
        "with an admin key still does).",
    ),
]


EngineOpt = Annotated[
    Engine,
    typer.Option(
        help="local: this process (uvicorn). ray: Ray Serve, --replicas copies of the bank, each request's rows "
        "sent to replicas that hold their adapters (`pip install 'peftkit[ray]'`)."
    ),
]
ReplicasOpt = Annotated[
    int, typer.Option(help="With --engine ray: model replicas (the minimum with --max-replicas).")
]
IngressReplicasOpt = Annotated[
    int,
    typer.Option(
        help="With --engine ray: ingress replicas (HTTP, validation, planning; no adapters loaded)."
    ),
]
MaxReplicasOpt = Annotated[
    Optional[int],
    typer.Option(help="With --engine ray: autoscale between --replicas and this many replicas."),
]
TargetOngoingOpt = Annotated[
    float, typer.Option(help="With --max-replicas: calls in flight per replica that autoscaling aims at.")
]
CpusPerReplicaOpt = Annotated[
    float, typer.Option(help="With --engine ray: CPUs (torch threads) per replica.")
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
    api_keys: ApiKeysOpt = None,
    no_auth: NoAuthOpt = False,
    allowed_host: AllowedHostOpt = None,
    body_timeout_s: BodyTimeoutOpt = 10.0,
    reload_interval_s: ReloadOpt = 1.0,
    engine: EngineOpt = Engine.local,
    address: RayAddressOpt = None,
    replicas: ReplicasOpt = 2,
    ingress_replicas: IngressReplicasOpt = 1,
    max_replicas: MaxReplicasOpt = None,
    target_ongoing_requests: TargetOngoingOpt = 4,
    cpus_per_replica: CpusPerReplicaOpt = 1,
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
    curl -s localhost:8000/v1/predict --json '{"segment": "hotel", "inputs": ["房间很干净"]}'
    curl -s localhost:8000/v1/predict \\
        --json '{"items": [{"segment": "book", "input": "纸质很差"}, {"segment": "laptop", "input": "散热很好"}]}'
    curl -s localhost:8000/v1/score --json '{"records": [{"platform": "app", "orders_90d": 3, "last_query": "耳机"}]}'
    peftkit serve --bank banks/shop --host 0.0.0.0 --api-keys keys.txt --allowed-host scoring.internal
    curl -s scoring.internal:8000/v1/score -H "Authorization: Bearer $KEY" --json '{"records": [...]}'
    peftkit serve --bank banks/shop --engine ray --replicas 2 --max-replicas 8   # the same API on Ray Serve
    ```

    POST bodies must be JSON (`Content-Type: application/json`; curl's `--json` sets it).
    """
    from peftkit.errors import PeftkitError
    from peftkit.inference.bank import AdapterBank
    from peftkit.inference.http_guard import LOOPBACK_NAMES, Security, host_name, read_api_keys
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
    keys = read_api_keys(api_keys) if api_keys is not None else None
    if keys is None and not no_auth and host_name(host) not in LOOPBACK_NAMES:
        raise PeftkitError(
            f"--host {host} listens beyond this machine: give --api-keys FILE (or PEFTKIT_API_KEYS), or say "
            "--no-auth when a gateway in front checks callers"
        )
    if body_timeout_s <= 0:
        raise PeftkitError(f"--body-timeout-s must be above 0, got {body_timeout_s}")
    if reload_interval_s < 0:
        raise PeftkitError(f"--reload-interval-s must be 0 (off) or more, got {reload_interval_s}")
    names = set(LOOPBACK_NAMES) | set(allowed_host or [])
    if host_name(host) not in ("0.0.0.0", "::"):
        names.add(host_name(host))
    elif not allowed_host:
        names.add("*")  # every interface: the names clients use are unknown here; keys guard it instead
    security = Security(keys, frozenset(n.lower() for n in names), body_timeout_s)
    limits = ServeLimits(max_items, max_body_kb * 1024, max_batch_rows, batch_wait_ms)
    if engine is Engine.ray:
        from peftkit.inference.ray_serve import serve_ray

        typer.echo(f"peftkit: serving bank {bank} on Ray Serve at http://{host}:{port}", err=True)
        serve_ray(
            bank, host=host, port=port, address=address, replicas=replicas, ingress_replicas=ingress_replicas,
            max_replicas=max_replicas,
            target_ongoing_requests=target_ongoing_requests, cpus_per_replica=cpus_per_replica, quant=quant,
            max_loaded=max_loaded, preload=preload, limits=limits, security=security,
        )  # fmt: skip
        return
    opened = AdapterBank.open(bank, quant=quant, max_loaded=max_loaded, preload=preload)
    for name, question in opened.questions.items():
        for adapter, reason in question.broken.items():
            typer.echo(f"peftkit: warning: question {name}: adapter {adapter} set aside: {reason}", err=True)
    held = "; ".join(
        f"{name}: {len(q.adapters)} adapters, {len(q.segments)} segments, fallback {q.fallback}"
        for name, q in opened.questions.items()
    )
    typer.echo(f"peftkit: serving bank {bank} ({held}) at http://{host}:{port}", err=True)
    run(
        opened, host=host, port=port, limits=limits, security=security,
        reload_interval_s=reload_interval_s or None,
    )  # fmt: skip
