"""The training queue: a slot per GPU (or CPU trainer), a queue per server with a cap, servers take turns.

Pure asyncio and plain data: it starts `runner(job)` coroutines and tells waiting jobs
their position whenever it changes. Which server goes next rotates, so one busy server
cannot starve the others.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

from imgcls.errors import ConflictError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    run_id: int
    guild_id: int
    workshop_id: int
    payload: Any = None  # whatever the runner needs (spec, channel, requester...)
    position: int = 0  # 1-based while waiting, 0 once running
    task: Optional[asyncio.Task] = field(default=None, repr=False)


Runner = Callable[[Job], Awaitable[None]]
PositionCallback = Callable[[Job], Awaitable[None]]


class TrainQueue:
    def __init__(self, runner: Runner, *, slots: int = 1, cap_per_guild: int = 3,
                 on_position: Optional[PositionCallback] = None) -> None:
        self._runner = runner
        self.slots = slots
        self.cap = cap_per_guild
        self._on_position = on_position
        self._waiting: "OrderedDict[int, deque[Job]]" = OrderedDict()  # guild -> jobs, in turn order
        self.running: list[Job] = []
        self._closed = False

    # ---------------------------------------------------------- queries

    def order(self) -> list[Job]:
        """Waiting jobs in the order they will start: one per server per round, servers in turn."""
        queues = [list(q) for q in self._waiting.values()]
        out: list[Job] = []
        for i in range(max((len(q) for q in queues), default=0)):
            out.extend(q[i] for q in queues if i < len(q))
        return out

    def jobs_for(self, workshop_id: int) -> list[Job]:
        return [j for j in self.running + self.order() if j.workshop_id == workshop_id]

    def waiting_in(self, guild_id: int) -> int:
        return len(self._waiting.get(guild_id, ()))

    # ---------------------------------------------------------- changes

    def set_slots(self, slots: int) -> None:
        """How many jobs may run at once (a GPU cluster's workers come and go); waiting jobs start if they can."""
        self.slots = max(1, slots)
        if not self._closed:
            self._pump()

    def check(self, guild_id: int, workshop_id: int) -> None:
        """ConflictError when a job for this workshop could not be queued now."""
        if self._closed:
            raise ConflictError("The bot is shutting down; try again in a minute.")
        if self.jobs_for(workshop_id):
            raise ConflictError("This workshop already has a run queued or training; wait for it to finish.")
        if self.waiting_in(guild_id) >= self.cap:
            raise ConflictError(f"This server already has {self.cap} runs waiting; try again when one has started.")

    def submit(self, job: Job) -> int:
        """Queue a job; returns its position (0: it starts now). ConflictError as `check` says."""
        self.check(job.guild_id, job.workshop_id)
        self._waiting.setdefault(job.guild_id, deque()).append(job)
        self._pump()
        return job.position

    def _pump(self) -> None:
        started = False
        while len(self.running) < self.slots and self._waiting:
            guild, q = next(iter(self._waiting.items()))
            job = q.popleft()
            self._waiting.move_to_end(guild)  # this server had its turn
            if not q:
                del self._waiting[guild]
            job.position = 0
            self.running.append(job)
            job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"train-run-{job.run_id}")
            started = True
        changed = []
        for i, job in enumerate(self.order(), 1):
            if job.position != i:
                job.position = i
                changed.append(job)
        if started or changed:
            for job in changed:
                self._notify(job)

    def _notify(self, job: Job) -> None:
        if self._on_position is None:
            return

        async def tell() -> None:
            try:
                await self._on_position(job)
            except Exception:
                log.exception("queue position update for run %s failed", job.run_id)

        asyncio.get_running_loop().create_task(tell())

    async def _run(self, job: Job) -> None:
        try:
            await self._runner(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("training run %s failed in the runner", job.run_id)
        finally:
            if job in self.running:
                self.running.remove(job)
            if not self._closed:
                self._pump()

    async def close(self) -> list[Job]:
        """Stop starting jobs, cancel the running ones' tasks; returns every job that did not finish."""
        self._closed = True
        left = self.running + self.order()
        self._waiting.clear()
        for job in list(self.running):
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(*(j.task for j in left if j.task is not None), return_exceptions=True)
        return left
