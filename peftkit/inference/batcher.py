"""The server's request batcher: units of work (`peftkit.inference.bank.Unit`) from requests that arrive together
are answered in one call on one worker thread, which is both the throughput win and what keeps one request's adapter
from leaking into another's (the worker alone switches adapters).

Each request gets its own answers back, in its own order. A batch that fails as a whole is answered again one
request at a time, so a bad request fails only itself, never the requests that shared its batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Job:
    units: list[Any]
    future: asyncio.Future = field(repr=False)


class RequestBatcher:
    """Collects jobs and answers them with ``answer(units) -> results`` (one result per unit, in order), at most
    ``max_batch_rows`` units a call, waiting ``batch_wait_ms`` after the first job for others to join."""

    def __init__(self, answer: Callable[[list], list], *, max_batch_rows: int, batch_wait_ms: float):
        self.answer, self.max_batch_rows, self.batch_wait_ms = answer, max_batch_rows, batch_wait_ms
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.batches = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()

    async def submit(self, units: list[Any]) -> list[Any]:
        """The results for `units`, answered together with whatever other jobs are waiting."""
        if not units:
            return []
        job = _Job(units, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _run(self) -> None:
        while True:
            jobs = await self._collect()
            await self._answer(jobs)

    async def _collect(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        jobs = [await self.queue.get()]
        rows = len(jobs[0].units)
        deadline = loop.time() + self.batch_wait_ms / 1000
        while rows < self.max_batch_rows:
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
            rows += len(job.units)
        return jobs

    async def _answer(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        units = [u for j in jobs for u in j.units]
        try:
            results = await loop.run_in_executor(None, self.answer, units)
        except Exception as exc:  # noqa: BLE001 - answered again per job below, so only the bad one fails
            if len(jobs) == 1:
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(exc)
                return
            for job in jobs:
                await self._answer([job])
            return
        self.batches += 1
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.units)])
            start += len(job.units)
