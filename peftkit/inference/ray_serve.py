"""Serving a bank on Ray Serve: ``peftkit serve --engine ray``, the same HTTP API and answers as ``peftkit serve``
on N replicas, each request's rows sent to replicas that already hold their adapters.

    HTTP -> Serve proxy -> BankIngress (the FastAPI app of `peftkit.inference.serve`, unchanged)
                             plan: texts rendered, segments routed to adapters; the request batcher
                             rows grouped by adapter, one call per adapter:
                             handle.options(multiplexed_model_id="question/adapter").answer.remote(units)
                        -> BankModel x N (each: the bank, one base; `AdapterBank.answer`, batched per replica)

The ingress runs the very routes ``peftkit serve`` runs (validation, limits, errors, /v1/adapters, /healthz) over
its own copy of the bank, so requests are checked and answered in the same words; only the call that computes
answers goes to the model replicas. Serve's model multiplexing keys each call by ``question/adapter`` (adapter
names are peftkit's versions: ``laptop-v2`` is a new key) and sends it to a replica that served that key before;
each replica's bank keeps its ``max_loaded`` adapters per question in memory. A call whose replica dies is sent
again (up to 3 tries) to a live one, so a killed replica costs latency, not answers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError
from peftkit.inference.ray_data import connect, require_ray

TRIES = 3  # calls to model replicas, each to a live replica after one dies


def build_app(
    bank: str | Path,
    *,
    replicas: int = 2,
    ingress_replicas: int = 1,
    max_replicas: int | None = None,
    target_ongoing_requests: float = 4,
    cpus_per_replica: float = 1,
    quant: str | None = None,
    max_loaded: int = 8,
    preload: bool = True,
    limits: Any = None,
    security: Any = None,
):
    """The Serve application (``serve.run(build_app(...))``): `replicas` model replicas of `bank` behind one ingress.

    Args:
        replicas: model replicas; with `max_replicas` the minimum Serve autoscales from.
        ingress_replicas: copies of the ingress (HTTP, validation, planning); each holds the bank without adapters.
        max_replicas: autoscale up to this many replicas (Serve's ``autoscaling_config``), keeping about
            `target_ongoing_requests` calls in flight per replica.
        cpus_per_replica: CPUs Ray reserves per model replica (its torch threads).
        quant, max_loaded, preload, limits, security: as for ``peftkit serve`` (`peftkit.inference.serve`).
    """
    require_ray()
    from ray import serve

    from peftkit.inference.serve import ServeLimits

    limits = limits or ServeLimits()
    if replicas < 1 or (max_replicas is not None and max_replicas < replicas):
        raise PeftkitError(
            f"--replicas {replicas} / --max-replicas {max_replicas}: need 1 <= replicas <= max"
        )
    folder = str(Path(bank).resolve())
    scaling: dict[str, Any] = {"num_replicas": replicas}
    if max_replicas is not None and max_replicas > replicas:
        scaling = {
            "autoscaling_config": {
                "min_replicas": replicas,
                "max_replicas": max_replicas,
                "target_ongoing_requests": target_ongoing_requests,
            }
        }
    threads = str(max(1, int(cpus_per_replica)))
    model = BankModel(serve, max_loaded, limits).options(
        **scaling,
        ray_actor_options={
            "num_cpus": cpus_per_replica,
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": threads}},
        },
    )
    ingress = BankIngress(serve).options(num_replicas=ingress_replicas, ray_actor_options={"num_cpus": 0})
    return ingress.bind(folder, quant, limits, security, model.bind(folder, quant, max_loaded, preload))


def BankModel(serve, max_loaded: int, limits):  # noqa: N802 - builds the deployment class
    """The model deployment: a bank per replica; `answer` takes units of one multiplexed adapter key."""

    @serve.deployment(name="BankModel", max_ongoing_requests=64)
    class _BankModel:
        def __init__(self, folder: str, quant: str | None, max_loaded: int, preload: bool):
            from peftkit.inference.bank import AdapterBank

            self.bank = AdapterBank.open(folder, quant=quant, max_loaded=max_loaded, preload=preload)

        @serve.multiplexed(max_num_models_per_replica=max_loaded)
        async def adapter(self, key: str) -> str:
            # The bank loads (and evicts) adapters itself on first use; this records the key on this replica, so
            # Serve sends the next call for it here.
            return key

        async def answer(self, units: list, added: dict[tuple[str, str], str]) -> list:
            await self.adapter(serve.get_multiplexed_model_id())
            for (question, name), path in added.items():  # adapters POSTed to the ingress after start
                q = self.bank.question(question)
                if name not in q.adapters:
                    await asyncio.to_thread(q.add, name, path)
            return await self._batched(units)

        @serve.batch(max_batch_size=limits.max_batch_rows, batch_wait_timeout_s=limits.batch_wait_ms / 1000)
        async def _batched(self, calls: list[list]) -> list[list]:
            # per-replica batching: the calls that arrive together answered in one `AdapterBank.answer`
            answers = await asyncio.to_thread(self.bank.answer, [u for units in calls for u in units])
            out, start = [], 0
            for units in calls:
                out.append(answers[start : start + len(units)])
                start += len(units)
            return out

    return _BankModel


def BankIngress(serve):  # noqa: N802 - builds the deployment class
    """The ingress deployment: ``peftkit serve``'s FastAPI app whose batcher answers through the model replicas."""

    @serve.deployment(name="BankIngress", max_ongoing_requests=256)
    @serve.ingress()
    class _BankIngress:
        def __init__(self, folder: str, quant: str | None, limits, security, model):
            from peftkit.inference.bank import AdapterBank

            # Plans requests and describes the bank; never answers, so no adapter is loaded here.
            self.bank = AdapterBank.open(folder, quant=quant, max_loaded=1)
            self.limits, self.security, self.model = limits, security, model
            self.started = {name: set(q.adapters) for name, q in self.bank.questions.items()}

        def __serve_build_asgi_app__(self):
            from peftkit.inference.batcher import RequestBatcher
            from peftkit.inference.serve import create_app

            app = create_app(self.bank, self.limits, self.security)
            app.state.batcher = RequestBatcher(
                self.answer,
                max_batch_rows=self.limits.max_batch_rows,
                batch_wait_ms=self.limits.batch_wait_ms,
            )
            return app

        def answer(self, units: list) -> list:
            """`AdapterBank.answer` over the model replicas (runs on the batcher's worker thread)."""
            groups: dict[tuple[str, str], list[int]] = {}
            for i, unit in enumerate(units):
                groups.setdefault((unit.question, unit.adapter), []).append(i)
            calls = {key: [units[i] for i in rows] for key, rows in groups.items()}
            added = {key: self._added(*key) for key in groups}
            added = {key: path for key, path in added.items() if path}
            pending = {key: self._call(key, calls[key], added) for key in groups}
            out: list = [None] * len(units)
            for key, rows in groups.items():
                for i, answer in zip(rows, self._result(key, calls[key], added, pending[key])):
                    out[i] = answer
            return out

        def _call(self, key: tuple[str, str], units: list, added: dict):
            handle = self.model.options(multiplexed_model_id=f"{key[0]}/{key[1]}")
            return handle.answer.remote(units, added)

        def _result(self, key, units, added, response) -> list:
            from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

            for attempt in range(TRIES):
                try:
                    return response.result()
                except (ActorDiedError, ActorUnavailableError, RayActorError):
                    if attempt == TRIES - 1:
                        raise
                    response = self._call(key, units, added)  # the router skips the dead replica
            raise AssertionError("unreachable")

        def _added(self, question: str, name: str) -> str | None:
            """The folder of an adapter added after start (POST /v1/adapters), for replicas that lack it."""
            if name in self.started[question]:
                return None
            q = self.bank.questions[question]
            return str((q.folder / q.adapters[name].path).resolve())

    return _BankIngress


def serve_ray(
    bank: str | Path,
    *,
    host: str,
    port: int,
    address: str | None = None,
    blocking: bool = True,
    **options: Any,
) -> None:
    """``peftkit serve --engine ray``: start (or join, at `address`) Ray, run the app on Serve at host:port, and
    serve until interrupted (with ``blocking``)."""
    require_ray()
    from ray import serve

    connect(address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(bank, **options), name="peftkit", route_prefix="/", blocking=False)
    if not blocking:
        return
    try:
        while True:
            asyncio.run(asyncio.sleep(3600))
    except KeyboardInterrupt:
        serve.shutdown()
