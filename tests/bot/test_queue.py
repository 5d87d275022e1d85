"""The training queue: slots, a cap per server, servers take turns, positions update."""
from __future__ import annotations

import asyncio

import pytest

from bot.queue import Job, TrainQueue
from imgcls.errors import ConflictError


async def test_servers_take_turns_and_positions_update():
    started: list[int] = []
    release: dict[int, asyncio.Event] = {}
    moved: list[tuple[int, int]] = []

    async def runner(job: Job) -> None:
        started.append(job.run_id)
        release[job.run_id] = asyncio.Event()
        await release[job.run_id].wait()

    async def on_position(job: Job) -> None:
        moved.append((job.run_id, job.position))

    q = TrainQueue(runner, slots=1, cap_per_guild=2, on_position=on_position)
    assert q.submit(Job(1, guild_id=10, workshop_id=100)) == 0
    assert q.submit(Job(2, guild_id=10, workshop_id=101)) == 1
    assert q.submit(Job(3, guild_id=10, workshop_id=102)) == 2
    with pytest.raises(ConflictError, match="2 runs waiting"):
        q.submit(Job(4, guild_id=10, workshop_id=103))
    with pytest.raises(ConflictError, match="already has a run"):
        q.submit(Job(5, guild_id=20, workshop_id=100))
    assert q.submit(Job(6, guild_id=20, workshop_id=200)) == 2  # server 20 goes before server 10's second run
    assert [j.run_id for j in q.order()] == [2, 6, 3]
    await asyncio.sleep(0)
    assert started == [1]

    release[1].set()
    while len(started) < 2:
        await asyncio.sleep(0.01)
    assert started == [1, 2] and [j.run_id for j in q.order()] == [6, 3]
    await asyncio.sleep(0.01)
    assert (6, 1) in moved and (3, 2) in moved
    release[2].set()
    while len(started) < 3:
        await asyncio.sleep(0.01)
    assert started == [1, 2, 6]

    left = await q.close()
    assert sorted(j.run_id for j in left) == [3, 6]
    with pytest.raises(ConflictError, match="shutting down"):
        q.submit(Job(7, guild_id=30, workshop_id=300))


async def test_a_failing_runner_frees_its_slot():
    ran = []

    async def runner(job: Job) -> None:
        ran.append(job.run_id)
        if job.run_id == 1:
            raise RuntimeError("boom")

    q = TrainQueue(runner, slots=1)
    q.submit(Job(1, 1, 1))
    q.submit(Job(2, 1, 2))
    for _ in range(100):
        if ran == [1, 2]:
            break
        await asyncio.sleep(0.01)
    assert ran == [1, 2] and not q.running


async def test_slots_follow_a_cluster_that_grows_and_servers_still_take_turns():
    started: list[int] = []
    gate = asyncio.Event()

    async def runner(job: Job) -> None:
        started.append(job.run_id)
        await gate.wait()

    q = TrainQueue(runner, slots=1, cap_per_guild=3)
    for run_id, guild in ((1, 10), (2, 10), (3, 20), (4, 10)):
        q.submit(Job(run_id, guild_id=guild, workshop_id=run_id))
    await asyncio.sleep(0)
    assert started == [1]
    q.set_slots(3)  # two more GPU workers joined: the next two in turn start now
    await asyncio.sleep(0)
    assert started == [1, 2, 3] and [j.run_id for j in q.order()] == [4]  # server 20 before 10 again
    q.set_slots(0)  # never fewer than one slot
    assert q.slots == 1
    gate.set()
    await q.close()
