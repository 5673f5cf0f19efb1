"""The shared pacer: one event-loop wake-up per slot for every call's bot audio, and the outbox that writes
carrier frames at once while the socket takes them and queues them, in order, when it does not."""

from __future__ import annotations

import asyncio

import pytest

from voicebot.audio.pacer import PacedJob, Pacer, shared_pacer
from voicebot.telephony.transport import Outbox, Transport


class CountingLoop:
    """Counts the timers the pacer arms on the running loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timers = 0

    def time(self) -> float:
        return self.loop.time()

    def call_at(self, when, callback, *args):
        self.timers += 1
        return self.loop.call_at(when, callback, *args)

    def call_exception_handler(self, context) -> None:
        self.loop.call_exception_handler(context)


async def test_jobs_due_in_the_same_slot_share_one_wake_up_and_each_runs_once():
    loop = CountingLoop(asyncio.get_running_loop())
    pacer = Pacer(loop, granularity_s=0.005)
    ran: list[int] = []
    jobs = [PacedJob(lambda i=i: ran.append(i)) for i in range(200)]
    for job in jobs:
        pacer.schedule(job, 0.010)
    await asyncio.sleep(0.030)
    assert sorted(ran) == list(range(200))
    assert loop.timers <= 2     # 200 calls, one timer (two if the batch straddled a slot boundary)


async def test_a_job_runs_no_earlier_than_asked_and_repeats_at_the_delay_it_returns():
    loop = asyncio.get_running_loop()
    pacer = Pacer(loop, granularity_s=0.002)
    started = loop.time()
    times: list[float] = []

    def run():
        times.append(loop.time() - started)
        return 0.020 if len(times) < 4 else None

    pacer.schedule(PacedJob(run), 0.020)
    await asyncio.sleep(0.150)
    assert len(times) == 4
    assert times[0] >= 0.020
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap >= 0.018 for gap in gaps), gaps


async def test_the_earliest_schedule_wins_and_the_job_is_not_run_twice():
    loop = asyncio.get_running_loop()
    pacer = Pacer(loop, granularity_s=0.002)
    started = loop.time()
    times: list[float] = []
    job = PacedJob(lambda: times.append(loop.time() - started))
    pacer.schedule(job, 0.080)
    pacer.schedule(job, 0.010)      # new audio arrived: run sooner
    pacer.schedule(job, 0.050)      # a later wish does not postpone it
    await asyncio.sleep(0.120)
    assert len(times) == 1
    assert times[0] < 0.050


async def test_a_cancelled_job_does_not_run():
    pacer = Pacer(asyncio.get_running_loop(), granularity_s=0.002)
    ran = []
    job = PacedJob(lambda: ran.append(1))
    pacer.schedule(job, 0.005)
    pacer.cancel(job)
    await asyncio.sleep(0.030)
    assert ran == []


async def test_one_failing_job_is_reported_and_the_others_in_its_slot_still_run():
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        pacer = Pacer(loop, granularity_s=0.005)
        ran: list[str] = []

        def broken():
            raise ValueError("bad frame")

        pacer.schedule(PacedJob(lambda: ran.append("before")), 0.005)
        pacer.schedule(PacedJob(broken), 0.005)
        pacer.schedule(PacedJob(lambda: ran.append("after")), 0.005)
        await asyncio.sleep(0.030)
    finally:
        loop.set_exception_handler(None)
    assert sorted(ran) == ["after", "before"]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], ValueError)


async def test_a_job_rescheduled_for_now_while_its_slot_runs_waits_for_the_next_slot():
    loop = asyncio.get_running_loop()
    pacer = Pacer(loop, granularity_s=0.002)
    runs = []

    def run():
        runs.append(loop.time())
        return 0.0 if len(runs) < 3 else None    # "due again at once" must not spin inside one slot

    pacer.schedule(PacedJob(run), 0.0)
    await asyncio.sleep(0.050)
    assert len(runs) == 3
    assert runs[1] > runs[0] and runs[2] > runs[1]


def test_each_event_loop_has_its_own_shared_pacer():
    async def pacers():
        return shared_pacer(), shared_pacer()

    first, again = asyncio.run(pacers())
    other, _ = asyncio.run(pacers())
    assert first is again
    assert other is not first


class SlowSocket(Transport):
    """A carrier connection whose socket takes ``room`` messages at once, then backs up until released."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.written: list[str] = []
        self.released = asyncio.Event()
        self.immediate = 0

    @property
    def closed(self) -> bool:
        return False

    async def deliver(self, on_message):
        raise NotImplementedError("the outbox never reads")

    def send_now(self, data) -> bool:
        if len(self.written) >= self.room and not self.released.is_set():
            return False
        self.immediate += 1
        self.written.append(data)
        return True

    async def send(self, data) -> None:
        await self.released.wait()
        self.written.append(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


async def test_outbox_writes_at_once_while_the_socket_takes_frames():
    socket = SlowSocket(room=100)
    outbox = Outbox(socket)
    for i in range(50):
        outbox.send_text(f"frame {i}")
    assert socket.written == [f"frame {i}" for i in range(50)]   # before any task ran
    await outbox.close()


async def test_outbox_keeps_frame_order_when_the_socket_backs_up_and_drains():
    socket = SlowSocket(room=3)
    outbox = Outbox(socket)
    for i in range(10):
        outbox.send_text(f"frame {i}")
    await asyncio.sleep(0)
    assert socket.written == ["frame 0", "frame 1", "frame 2"]
    socket.released.set()               # the socket drains; frames sent now must not jump the queue
    outbox.send_text("frame 10")
    await asyncio.sleep(0.01)
    outbox.send_text("frame 11")
    await outbox.close()
    assert socket.written == [f"frame {i}" for i in range(12)]
    assert socket.immediate == 4        # the first three, and the one sent after the backlog drained


@pytest.mark.parametrize("payload", ["text", b"binary"])
async def test_outbox_on_a_transport_without_synchronous_writes_still_delivers(payload):
    class QueuedOnly(SlowSocket):
        def send_now(self, data) -> bool:
            return False

    socket = QueuedOnly(room=0)
    socket.released.set()
    outbox = Outbox(socket)
    outbox.send_text(payload) if isinstance(payload, str) else outbox.send_bytes(payload)
    await outbox.close()
    assert socket.written == [payload]
