"""``peftkit serve``: an adapter bank behind an HTTP JSON API (FastAPI + uvicorn).

    POST /v1/predict    {"segment": "hotel", "inputs": ["房间很干净"]}
                        {"items": [{"segment": "book", "input": "..."}, {"segment": "laptop", "input": "..."}]}
    GET  /v1/adapters   segments, adapters (method, base, metrics), fallback
    POST /v1/adapters   {"name": "laptop-v2", "path": "laptop-v2", "segments": ["laptop"]}: load an adapter folder
                        that lies inside the bank folder, and route segments to it
    GET  /healthz

One worker owns the model: requests that arrive while it is busy are answered together in one batch (rows of
different segments included), which is both the throughput win and what keeps one request's adapter from leaking
into another's. Each request logs one line: status, segments, adapters, rows, latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from peftkit.errors import PeftkitError
from peftkit.inference.bank import AdapterBank, UnknownSegmentError

log = logging.getLogger("peftkit.inference.serve")


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str
    segment: str | None = None


class PredictRequest(BaseModel):
    """Either ``inputs`` (with one optional ``segment`` for all) or ``items`` (each with its own segment)."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[str] | None = None
    segment: str | None = None
    items: list[Item] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> PredictRequest:
        if (self.inputs is None) == (self.items is None):
            raise ValueError(
                'give either "inputs" (and optionally "segment") or "items", not both or neither'
            )
        if self.items is not None and self.segment is not None:
            raise ValueError('"segment" goes inside each item when "items" is used')
        if not (self.inputs or self.items):
            raise ValueError("nothing to predict: the list is empty")
        return self

    def rows(self) -> tuple[list[str], list[str | None]]:
        if self.items is not None:
            return [i.input for i in self.items], [i.segment for i in self.items]
        return list(self.inputs), [self.segment] * len(self.inputs)


class AddAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="adapter name in the bank")
    path: str = Field(description="adapter folder, relative to the bank folder (and inside it)")
    segments: list[str] | None = Field(None, description="segments routed to it; default: [name]")


@dataclass
class ServeLimits:
    max_items: int = 256  # rows per request; more: 413
    max_body_bytes: int = 1 << 20  # request body; more: 413
    max_batch_rows: int = 64  # rows the worker answers in one batch across requests
    batch_wait_ms: float = 2.0  # after the first request, wait this long for others to join its batch


@dataclass
class _Job:
    texts: list[str]
    adapters: list[str]
    future: asyncio.Future = field(repr=False)


class _Batcher:
    """Collects predict jobs and answers them in batches on one worker thread, each row with its own adapter."""

    def __init__(self, bank: AdapterBank, limits: ServeLimits):
        self.bank, self.limits = bank, limits
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.batches = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()

    async def submit(self, texts: list[str], adapters: list[str]) -> list:
        job = _Job(texts, adapters, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            rows = len(jobs[0].texts)
            deadline = loop.time() + self.limits.batch_wait_ms / 1000
            while rows < self.limits.max_batch_rows:
                timeout = deadline - loop.time()
                try:
                    job = (
                        self.queue.get_nowait()
                        if timeout <= 0
                        else await asyncio.wait_for(self.queue.get(), timeout)
                    )
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                jobs.append(job)
                rows += len(job.texts)
            texts = [t for j in jobs for t in j.texts]
            adapters = [a for j in jobs for a in j.adapters]
            try:
                preds = await loop.run_in_executor(None, self._predict, texts, adapters)
            except Exception as exc:  # answer every waiting request rather than hang them
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            self.batches += 1
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(preds[start : start + len(j.texts)])
                start += len(j.texts)

    def _predict(self, texts: list[str], adapters: list[str]):
        from peftkit.inference.predictor import decode_predictions

        logits = self.bank.logits(texts, adapters)
        return decode_predictions(self.bank.task, self.bank.labels, logits, adapters)


def create_app(bank: AdapterBank, limits: ServeLimits | None = None) -> FastAPI:
    """The FastAPI app serving `bank`; `peftkit serve` runs it with uvicorn."""
    from contextlib import asynccontextmanager

    limits = limits or ServeLimits()
    batcher = _Batcher(bank, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="peftkit",
        summary=f"adapter bank {bank.folder}: {bank.bank.task} with {bank.bank.method} adapters",
        lifespan=lifespan,
    )
    app.state.bank, app.state.batcher = bank, batcher

    @app.middleware("http")
    async def limit_and_log(request: Request, call_next):
        started = time.perf_counter()
        request.state.log = {}
        size = request.headers.get("content-length")
        if request.method == "POST" and not (size or "").isdigit():
            # The size limit is checked before the body is read: a body of unknown length could be any size.
            response = _error(411, "send a Content-Length header with the request body")
        elif size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            response = _error(
                413, f"request body is {int(size):,} bytes; the limit is {limits.max_body_bytes:,}"
            )
        else:
            response = await call_next(request)
        extra = " ".join(f"{k}={v}" for k, v in request.state.log.items())
        log.info(
            "%s %s %d %.1fms %s",
            request.method,
            request.url.path,
            response.status_code,
            1000 * (time.perf_counter() - started),
            extra,
        )
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error(422, _problems(exc.errors()))

    @app.post("/v1/predict")
    async def predict(request: Request):
        body = await _parse(request, PredictRequest)
        if isinstance(body, JSONResponse):
            return body
        texts, segments = body.rows()
        if len(texts) > limits.max_items:
            return _error(413, f"{len(texts)} inputs in one request; the limit is {limits.max_items}")
        try:
            adapters = bank.resolve_all(segments)
        except UnknownSegmentError as exc:
            request.state.log.update(segments=_counts(segments))
            return _error(404, str(exc), known_segments=sorted(bank.segments))
        preds = await batcher.submit(texts, adapters)
        request.state.log.update(rows=len(texts), segments=_counts(segments), adapters=_counts(adapters))
        return {
            "predictions": [
                {
                    "segment": seg,
                    "adapter": p.adapter,
                    **(
                        {"score": p.score}
                        if p.score is not None
                        else {"label": p.label, "probabilities": p.probabilities}
                    ),
                }
                for seg, p in zip(segments, preds)
            ]
        }

    @app.get("/v1/adapters")
    async def adapters():
        return bank.describe()

    @app.post("/v1/adapters", status_code=201)
    async def add_adapter(request: Request):
        body = await _parse(request, AddAdapterRequest)
        if isinstance(body, JSONResponse):
            return body
        request.state.log.update(adapter=body.name)
        root = bank.folder.resolve()
        folder = (root / body.path).resolve()
        if Path(body.path).is_absolute() or not folder.is_relative_to(root):
            return _error(
                403, f"path {body.path!r} is outside the bank folder; adapters load from inside it only"
            )
        if not folder.is_dir():
            return _error(404, f"no adapter folder {body.path!r} inside the bank folder")
        if body.name in bank.adapters:
            return _error(409, f"the bank already has an adapter named {body.name!r}")
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: bank.add(body.name, folder, segments=body.segments)
            )
        except PeftkitError as exc:
            return _error(422, str(exc))
        return {"added": body.name, "segments": body.segments or [body.name]}

    @app.get("/healthz")
    async def healthz():
        return {
            "status": "ok",
            "adapters": len(bank.adapters),
            "loaded": bank.loaded,
            "batches": batcher.batches,
        }

    return app


async def _parse(request: Request, model: type[BaseModel]):
    """The JSON body as `model`, or a 422 response saying what is wrong.

    Read by hand rather than declared as a FastAPI body parameter so that a JSON body is accepted whatever its
    Content-Type (``curl -d`` sends form-urlencoded).
    """
    import json

    from pydantic import ValidationError

    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(422, f"body is not valid JSON: {exc}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return _error(422, _problems(exc.errors()))


def _problems(errors) -> str:
    problems = []
    for err in errors:
        where = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems[:5])


def _counts(values: list[Any]) -> str:
    from collections import Counter

    return ",".join(f"{k}:{n}" for k, n in Counter(values).most_common(4))


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, **extra})


def run(bank: AdapterBank, *, host: str, port: int, limits: ServeLimits, log_level: str = "info") -> None:
    """Serve until interrupted."""
    import uvicorn

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s peftkit.inference.serve %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # one line per request, with a timestamp, not twice
    uvicorn.run(create_app(bank, limits), host=host, port=port, log_level=log_level, access_log=False)
