"""``peftkit serve``: an adapter bank behind an HTTP JSON API (FastAPI + uvicorn).

    POST /v1/score      {"records": [{"user_id": 7, "platform": "app", "orders_90d": 3, ...}], "questions": [...]}
                        every question (or those named) for every record, each text built from the record as the
                        question's adapter was trained; per record and question a label/score or its own error;
                        with "explain": true (and optionally "top_k"), each answer's explanation as well
                        (`peftkit.inference.explain`; at most ``max_explain_items`` records: it is ~20x the work)
    POST /v1/predict    {"segment": "hotel", "inputs": ["房间很干净"]}
                        {"items": [{"segment": "book", "input": "..."}, {"segment": "laptop", "input": "..."}]}
                        finished texts, for one question ("question": name, when the bank has several);
                        "explain": true adds each answer's explanation, as in /v1/score
    GET  /v1/adapters   questions, segments, adapters (method, base, metrics), fallback
    POST /v1/adapters   {"name": "laptop-v2", "path": "laptop-v2", "segments": ["laptop"]}: load an adapter folder
                        that lies inside the bank folder, and route segments to it
    POST /v1/reload     (admin) follow promotions, rollbacks and canaries written since start now, without waiting
                        for the bank.json watcher (`peftkit.inference.reload`)
    GET  /metrics       Prometheus text: per question, adapter and version, requests, answers, errors and a score
                        histogram (`peftkit.inference.metrics`; a score key where keys are set)
    GET  /healthz

The route turns a request into units (`AdapterBank.plan`: texts rendered, segments routed), the request batcher
(`peftkit.inference.batcher`) answers the units of requests that arrive together in one call of
`AdapterBank.answer` on one worker, and the route puts its answers back together. An item that cannot be answered
gets its own error (HTTP 200 with per-item errors; 422 when every item fails); it never fails its batch-mates.
Each request logs one line: status, questions, segments, adapters, rows, latency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, model_validator

from peftkit.errors import PeftkitError
from peftkit.inference.bank import AdapterBank, Score, Unit, UnknownSegmentError
from peftkit.inference.batcher import RequestBatcher
from peftkit.inference.explain import (
    DEFAULT_STEPS,
    DEFAULT_TOP_K,
    ExplainOptions,
    explain_question,
    explain_scores,
)
from peftkit.inference.http_guard import Guard, Security
from peftkit.inference.metrics import Metrics
from peftkit.inference.predictor import Prediction
from peftkit.inference.reload import Reloader

log = logging.getLogger("peftkit.inference.serve")
MAX_JSON_DEPTH = 32  # records are flat objects; deeper nesting is only ever an attack on the parser


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
    question: str | None = None
    explain: bool = False
    top_k: int | None = None
    n_steps: int | None = None

    @model_validator(mode="after")
    def _one_form(self) -> PredictRequest:
        _explain_fields(self)
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


class ScoreRequest(BaseModel):
    """Records (field -> value), and optionally which questions to answer (default: all)."""

    model_config = ConfigDict(extra="forbid")
    records: list[dict[str, Any]] = Field(description="one object per user: the fields the questions read")
    questions: list[str] | None = Field(
        None, description="question names; default: every question of the bank"
    )
    explain: bool = Field(False, description="add each answer's explanation (top tokens, per-field sums)")
    top_k: int | None = Field(None, description="with explain: tokens listed per answer (default 5)")
    n_steps: int | None = Field(None, description="with explain: integration steps per answer (default 16)")

    @model_validator(mode="after")
    def _some(self) -> ScoreRequest:
        _explain_fields(self)
        if not self.records:
            raise ValueError("nothing to score: the list of records is empty")
        return self


def _explain_fields(body) -> None:
    if not body.explain and (body.top_k is not None or body.n_steps is not None):
        raise ValueError('"top_k" and "n_steps" need "explain": true')
    if body.explain:
        explain_options(body)  # a bad value is this request's 422, before any work


def explain_options(body) -> ExplainOptions:
    try:
        return ExplainOptions(
            DEFAULT_TOP_K if body.top_k is None else body.top_k,
            DEFAULT_STEPS if body.n_steps is None else body.n_steps,
        )
    except PeftkitError as exc:
        raise ValueError(str(exc).replace(" (--top-k)", "").replace(" (--explain-steps)", "")) from None


class AddAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="adapter name in the bank")
    path: str = Field(description="adapter folder, relative to the bank folder (and inside it)")
    segments: list[str] | None = Field(None, description="segments routed to it; default: [name]")
    question: str | None = Field(
        None, description="the question it answers (needed when the bank has several)"
    )


@dataclass
class ServeLimits:
    max_items: int = 256  # rows per request; more: 413
    max_body_bytes: int = 1 << 20  # request body; more: 413
    max_batch_rows: int = 64  # rows the worker answers in one batch across requests
    batch_wait_ms: float = 2.0  # after the first request, wait this long for others to join its batch
    max_explain_items: int = 16  # rows per request with "explain" (~20 passes each); more: 413


class _JSONBody(Request):
    """A request whose JSON body is parsed with bounds: nesting depth, number sizes and encoding problems are 422,
    never a 500 (`http_guard.Guard` has already checked the content type and the size)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            if _depth(raw) > MAX_JSON_DEPTH:
                raise HTTPException(422, f"body is nested deeper than {MAX_JSON_DEPTH} levels")
            try:
                self._json = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise HTTPException(422, f"body is not valid JSON: {exc}") from None
            except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4,300 digits
                raise HTTPException(422, f"body is not acceptable JSON: {str(exc)[:120]}") from None
        return self._json


def _depth(raw: bytes) -> int:
    """How deeply `raw`'s JSON arrays and objects nest (strings skipped), without parsing it."""
    deepest = depth = 0
    for bracket in re.findall(rb"[\[\]{}]", re.sub(rb'"(?:[^"\\]|\\.)*"', b"", raw)):
        depth += 1 if bracket in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


class JSONBodyRoute(APIRoute):
    """A route whose pydantic body is parsed by `_JSONBody`; an empty body is not JSON."""

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def route(request: Request) -> Response:
            request = _JSONBody(request.scope, request.receive)
            if self.body_field is not None:
                await request.json()  # FastAPI skips an empty body; it is not valid JSON either
            return await handle(request)

        return route


def get_bank(request: Request) -> AdapterBank:
    return request.app.state.bank


def get_batcher(request: Request) -> RequestBatcher:
    return request.app.state.batcher


def get_limits(request: Request) -> ServeLimits:
    return request.app.state.limits


Bank = Annotated[AdapterBank, Depends(get_bank)]
Batcher = Annotated[RequestBatcher, Depends(get_batcher)]
Limits = Annotated[ServeLimits, Depends(get_limits)]
router = APIRouter(route_class=JSONBodyRoute)


@router.post("/v1/score")
async def score(
    body: ScoreRequest, request: Request, bank: Bank, batcher: Batcher, limits: Limits
) -> JSONResponse:
    """Every question (or those named) for every record, each record's text built as each question's adapter was
    trained to read it."""
    if len(body.records) > limits.max_items:
        raise HTTPException(
            413, f"{len(body.records)} records in one request; the limit is {limits.max_items}"
        )
    _check_explain(body, len(body.records), limits)
    try:
        plan = bank.plan(body.records, body.questions)
    except PeftkitError as exc:
        raise HTTPException(422, str(exc)) from None
    scores = bank.assemble(plan, await batcher.submit(plan.units))
    for name in plan.questions:
        request.app.state.metrics.observe(name, [r[name] for r in scores], bank.questions[name].labels)
    if body.explain:
        scores = await _off_loop(
            lambda: explain_scores(bank, plan, scores, body.records, explain_options(body))
        )
    adapters = [s.adapter for record in scores for s in record.values()]
    request.state.log.update(
        rows=len(scores),
        questions=",".join(plan.questions),
        adapters=_counts(adapters),
        errors=_errors(scores),
    )
    content = {"scores": [{q: s.to_json() for q, s in record.items()} for record in scores]}
    failed_all = all(s.error for record in scores for s in record.values())
    return JSONResponse(content, status_code=422 if failed_all else 200)


@router.post("/v1/predict")
async def predict(
    body: PredictRequest, request: Request, bank: Bank, batcher: Batcher, limits: Limits
) -> JSONResponse:
    """Each input answered by its segment's adapter, in order."""
    texts, segments = body.rows()
    if len(texts) > limits.max_items:
        raise HTTPException(413, f"{len(texts)} inputs in one request; the limit is {limits.max_items}")
    try:
        question = bank.question(body.question)
    except PeftkitError as exc:
        raise HTTPException(422, str(exc)) from None
    _check_explain(body, len(texts), limits)
    request.state.log.update(segments=_counts(segments))
    adapters = question.resolve_all(segments)  # UnknownSegmentError: 404 with the known segments
    keys = question.pick(adapters)  # one snapshot of the version pointers for the whole request
    answers = await batcher.submit([Unit(question.name, t, k) for t, k in zip(texts, keys)])
    request.app.state.metrics.observe(question.name, answers, question.labels)
    request.state.log.update(rows=len(texts), adapters=_counts(adapters))
    content = {"predictions": [_prediction_json(seg, a) for seg, a in zip(segments, answers)]}
    if body.explain:
        ok = [i for i, a in enumerate(answers) if not isinstance(a, str)]
        why = await _off_loop(
            lambda: explain_question(
                question, [texts[i] for i in ok], [adapters[i] for i in ok], explain_options(body)
            )
        )
        for i, explanation in zip(ok, why):
            content["predictions"][i]["explanation"] = explanation.to_json()
    failed_all = all(isinstance(a, str) for a in answers)
    return JSONResponse(content, status_code=422 if failed_all else 200)


def _check_explain(body, rows: int, limits: ServeLimits) -> None:
    if body.explain and rows > limits.max_explain_items:
        raise HTTPException(
            413,
            f"{rows} rows with explain in one request; the limit is {limits.max_explain_items} (an explanation "
            "costs ~20 forward and backward passes per row): send fewer rows, or leave out explain",
        )


async def _off_loop(work):
    """Run `work` (an explanation: seconds of model work) on a worker thread, its user error a 422."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, work)
    except PeftkitError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/v1/adapters")
async def adapters(bank: Bank) -> dict[str, Any]:
    """What the bank holds: segments, adapters with metrics, fallback."""
    return bank.describe()


@router.post("/v1/adapters", status_code=201)
async def add_adapter(body: AddAdapterRequest, request: Request, bank: Bank) -> dict[str, Any]:
    """Load an adapter folder from inside the bank folder and route its segments to it."""
    request.state.log.update(adapter=body.name)
    try:
        question = bank.question(body.question)
    except PeftkitError as exc:
        raise HTTPException(422, str(exc)) from None
    if "\x00" in body.path or "\x00" in body.name:
        raise HTTPException(422, "path and name may not hold a NUL character")
    root = bank.folder.resolve()
    folder = (root / body.path).resolve()
    if Path(body.path).is_absolute() or not folder.is_relative_to(root):
        raise HTTPException(
            403, f"path {body.path!r} is outside the bank folder; adapters load from inside it only"
        )
    if not folder.is_dir():
        raise HTTPException(404, f"no adapter folder {body.path!r} inside the bank folder")
    if body.name in question.adapters:
        raise HTTPException(409, f"the bank already has an adapter named {body.name!r}")
    try:
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: question.add(body.name, folder, segments=body.segments)
        )
    except PeftkitError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"added": body.name, "segments": body.segments or [body.name]}


@router.post("/v1/reload")
async def reload(request: Request) -> dict[str, Any]:
    """Follow the version pointers of every question's bank.json now (promote, rollback, canary)."""
    reloader: Reloader = request.app.state.reloader
    try:
        changes = await asyncio.get_running_loop().run_in_executor(None, lambda: reloader.check(force=True))
    except PeftkitError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"reloaded": changes, "versions": _versions(request.app.state.bank)}


@router.get("/metrics")
async def metrics(request: Request, bank: Bank) -> Response:
    """Prometheus text exposition: requests, answers, errors and score histograms per question/adapter/version."""
    roles = {}
    for name, question in bank.questions.items():
        for adapter, pointer in question.pointers.items():
            roles[name, adapter, pointer.key] = "production"
            if pointer.canary is not None:
                roles[name, adapter, pointer.canary] = "canary"
    request.app.state.metrics.set_roles(roles)
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")


def _versions(bank: AdapterBank) -> dict[str, dict[str, str]]:
    return {n: {a: p.key for a, p in q.pointers.items()} for n, q in bank.questions.items()}


@router.get("/healthz")
async def healthz(bank: Bank, batcher: Batcher) -> dict[str, Any]:
    adapters = sum(len(q.adapters) for q in bank.questions.values())
    return {"status": "ok", "adapters": adapters, "loaded": bank.loaded, "batches": batcher.batches}


def create_app(
    bank: AdapterBank,
    limits: ServeLimits | None = None,
    security: Security | None = None,
    reload_interval_s: float | None = 1.0,
) -> FastAPI:
    """The FastAPI app serving `bank`; `peftkit serve` runs it with uvicorn. `security`: who may call it (default:
    no keys, loopback host names only). `reload_interval_s`: how often to look for version moves in the bank's
    bank.json files (None: only on ``POST /v1/reload``)."""
    app = FastAPI(
        title="peftkit",
        summary=f"adapter bank {bank.folder}: "
        + ", ".join(f"{n} ({q.bank.task}, {q.bank.method})" for n, q in bank.questions.items()),
        lifespan=_lifespan,
    )
    app.state.bank, app.state.limits = bank, limits or ServeLimits()
    app.state.reloader, app.state.metrics = Reloader(bank, reload_interval_s), Metrics()
    app.state.batcher = RequestBatcher(
        bank.answer,
        max_batch_rows=app.state.limits.max_batch_rows,
        batch_wait_ms=app.state.limits.batch_wait_ms,
    )
    app.add_middleware(
        Guard, max_body_bytes=app.state.limits.max_body_bytes, security=security or Security(), log=log
    )
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.add_exception_handler(UnknownSegmentError, _unknown_segment)
    app.include_router(router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    app.state.batcher.start()
    app.state.reloader.start()
    yield
    app.state.reloader.stop()
    await app.state.batcher.stop()


async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(422, _problems(_model_errors(request, exc)))


def _model_errors(request: Request, exc: RequestValidationError) -> list:
    """The body's problems as pydantic words them validating the JSON against the route's model.

    FastAPI validates from attributes too, which words a type error without the model's name.
    """
    from pydantic import ValidationError

    body_field = getattr(request.scope.get("route"), "body_field", None)
    if body_field is None:  # the body is there: `JSONBodyRoute` refuses an empty one
        return exc.errors()
    try:
        body_field.field_info.annotation.model_validate(exc.body)
    except ValidationError as err:
        return err.errors()
    return exc.errors()


async def _unknown_segment(request: Request, exc: UnknownSegmentError) -> JSONResponse:
    bank: AdapterBank = request.app.state.bank
    known = sorted({s for q in bank.questions.values() for s in q.segments})
    return _error(404, str(exc), known_segments=known)


def _prediction_json(segment: str | None, p: Prediction | str) -> dict[str, Any]:
    if isinstance(p, str):
        return {"segment": segment, "error": p}
    answer = (
        {"score": p.score} if p.score is not None else {"label": p.label, "probabilities": p.probabilities}
    )
    version = {"version": p.version} if p.version is not None else {}
    return {"segment": segment, "adapter": p.adapter, **version, **answer}


def _errors(scores: list[dict[str, Score]]) -> int:
    return sum(1 for record in scores for s in record.values() if s.error)


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


def run(
    bank: AdapterBank,
    *,
    host: str,
    port: int,
    limits: ServeLimits,
    security: Security | None = None,
    log_level: str = "info",
    reload_interval_s: float | None = 1.0,
) -> None:
    """Serve until interrupted."""
    import uvicorn

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s peftkit.inference.serve %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # one line per request, with a timestamp, not twice
    uvicorn.run(
        create_app(bank, limits, security, reload_interval_s),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=5,  # an idle connection is closed after 5 s
        h11_max_incomplete_event_size=16 * 1024,  # request line and headers: at most 16 KiB
    )
