"""Playout pacing and the "what did the caller hear" bookkeeping, against a model of a carrier's buffer."""

import numpy as np
import pytest

from voicebot.audio.playout import Playout


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class CarrierModel:
    """Plays 20 ms frames in order in real time; echoes a mark when the audio before it has played."""

    def __init__(self, clock, supports_marks=True):
        self.clock = clock
        self.supports_marks = supports_marks
        self.play_end = 0.0          # when the carrier's buffer runs dry
        self.frames = []             # (start, item-agnostic sample payload)
        self.pending_echoes = []     # (time, name)
        self.clears = []
        self.sent_marks = []
        self.wire = []               # ("audio", samples) / ("mark", name), in the order sent

    def send_audio(self, pcm):
        assert len(pcm) % 160 == 0, "audio messages carry whole 20 ms frames"
        self.wire.append(("audio", len(pcm)))
        for i in range(0, len(pcm), 160):
            start = max(self.play_end, self.clock.t)
            self.play_end = start + 0.020
            self.frames.append((start, pcm[i:i + 160]))

    def send_mark(self, name):
        self.wire.append(("mark", name))
        self.sent_marks.append(name)
        self.pending_echoes.append((max(self.play_end, self.clock.t), name))

    def send_clear(self):
        self.clears.append(self.clock.t)
        now = self.clock.t
        self.frames = [(s, f) for s, f in self.frames if s + 0.020 <= now]
        self.play_end = now
        cleared = [(now, n) for _, n in self.pending_echoes]
        self.pending_echoes = cleared

    def played_ms(self, until):
        return sum(min(max(until - s, 0.0), 0.020) for s, _ in self.frames) * 1000

    def deliver(self, playout):
        due = [(t, n) for t, n in self.pending_echoes if t <= self.clock.t]
        self.pending_echoes = [(t, n) for t, n in self.pending_echoes if t > self.clock.t]
        for t, name in sorted(due):
            playout.on_mark(name, now=t)


def speech(ms, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(8 * ms) * 3000).astype(np.int16)


def run_until(clock, carrier, playout, t_end, step=0.005):
    while clock.t < t_end:
        playout.pump()
        carrier.deliver(playout)
        clock.t = round(clock.t + step, 6)


def test_sends_only_the_lead_ahead_of_real_time():
    clock = Clock()
    carrier = CarrierModel(clock)
    playout = Playout(carrier, lead_ms=100, mark_every_ms=100, clock=clock)
    playout.enqueue("item1", speech(2000))
    playout.pump()
    assert len(carrier.frames) == 5          # 100 ms lead, nothing more
    run_until(clock, carrier, playout, clock.t + 1.0)
    sent_ms = len(carrier.frames) * 20
    assert 1080 <= sent_ms <= 1120           # one second later: one second + the lead
    assert all(len(f) == 160 for _, f in carrier.frames)


@pytest.mark.parametrize("chunk_ms", [20, 100])
def test_heard_ms_follows_what_the_carrier_played(chunk_ms):
    clock = Clock()
    carrier = CarrierModel(clock)
    playout = Playout(carrier, lead_ms=100, mark_every_ms=100, chunk_ms=chunk_ms, clock=clock)
    start = clock.t
    playout.enqueue("item1", speech(3000))
    for t in (0.25, 0.73, 1.51, 2.02):
        run_until(clock, carrier, playout, start + t)
        truth = carrier.played_ms(clock.t)
        assert abs(playout.heard_ms("item1") - truth) <= 20, (t, playout.heard_ms("item1"), truth)


@pytest.mark.parametrize("chunk_ms", [20, 100])
def test_underrun_gap_is_not_counted_as_heard(chunk_ms):
    clock = Clock()
    carrier = CarrierModel(clock)
    playout = Playout(carrier, lead_ms=100, mark_every_ms=100, chunk_ms=chunk_ms, clock=clock)
    start = clock.t
    playout.enqueue("item1", speech(300))
    run_until(clock, carrier, playout, start + 0.8)       # 300 ms played, then 500 ms of nothing
    assert playout.heard_ms("item1") == 300
    assert not playout.speaking
    playout.enqueue("item1", speech(400, seed=1))          # the engine delivers more, late
    run_until(clock, carrier, playout, start + 1.0)
    truth = carrier.played_ms(clock.t)
    assert abs(playout.heard_ms("item1") - truth) <= 20
    assert playout.heard_ms("item1") < 520


@pytest.mark.parametrize("chunk_ms", [20, 100])
def test_interrupt_clears_reports_heard_and_ignores_cleared_mark_echoes(chunk_ms):
    clock = Clock()
    carrier = CarrierModel(clock)
    playout = Playout(carrier, lead_ms=100, mark_every_ms=100, chunk_ms=chunk_ms, clock=clock)
    start = clock.t
    playout.enqueue("item1", speech(3000))
    run_until(clock, carrier, playout, start + 1.234)
    assert playout.speaking
    truth = carrier.played_ms(clock.t)
    heard = playout.interrupt()
    assert carrier.clears == [clock.t]
    assert [h.item_id for h in heard] == ["item1"]
    assert abs(heard[0].heard_ms - truth) <= 20
    assert heard[0].generated_ms == 3000
    frames_before = len(carrier.frames)
    carrier.deliver(playout)                 # the carrier echoes every pending mark after clear
    run_until(clock, carrier, playout, clock.t + 0.5)
    assert len(carrier.frames) == frames_before   # nothing more is sent for the dropped audio
    assert not playout.speaking


@pytest.mark.parametrize("chunk_ms", [20, 100])
def test_without_marks_the_pacing_clock_stands_in(chunk_ms):
    clock = Clock()
    carrier = CarrierModel(clock, supports_marks=False)
    playout = Playout(carrier, lead_ms=100, mark_every_ms=100, chunk_ms=chunk_ms, clock=clock)
    start = clock.t
    playout.enqueue("item1", speech(1500))
    playout.end_item("item1")
    run_until(clock, carrier, playout, start + 0.9)
    assert carrier.sent_marks == []
    assert abs(playout.heard_ms("item1") - carrier.played_ms(clock.t)) <= 20
    run_until(clock, carrier, playout, start + 2.0)
    assert playout.heard_ms("item1") == 1500
    assert not playout.speaking


@pytest.mark.parametrize("chunk_ms", [20, 100])
def test_items_in_sequence_each_know_their_own_position(chunk_ms):
    clock = Clock()
    carrier = CarrierModel(clock)
    playout = Playout(carrier, lead_ms=100, mark_every_ms=100, chunk_ms=chunk_ms, clock=clock)
    start = clock.t
    playout.enqueue("a", speech(500))
    playout.end_item("a")
    playout.enqueue("b", speech(1000, seed=2))
    run_until(clock, carrier, playout, start + 0.8)
    assert playout.heard_ms("a") == 500
    assert abs(playout.heard_ms("b") - 300) <= 20
    heard = playout.interrupt()
    assert [h.item_id for h in heard] == ["b"]


def chunked_playout(chunk_ms):
    clock = Clock()
    carrier = CarrierModel(clock)
    return clock, carrier, Playout(carrier, lead_ms=100, mark_every_ms=100, chunk_ms=chunk_ms, clock=clock)


def test_where_the_carrier_takes_any_length_frames_go_out_in_chunks_that_never_cross_a_mark():
    clock, carrier, playout = chunked_playout(chunk_ms=100)
    start = clock.t
    playout.enqueue("a", speech(1000))
    playout.end_item("a")
    playout.enqueue("b", speech(250, seed=1))      # 12.5 frames: the last one padded
    playout.end_item("b")
    run_until(clock, carrier, playout, start + 2.0)
    sizes = [n for kind, n in carrier.wire if kind == "audio"]
    assert sizes == [800] * 10 + [800, 800, 480]    # 1 s of a, 260 ms of b: one message per 100 ms
    # every 100 ms of an item is followed by its mark, so "heard" stays exact
    kinds = [kind for kind, _ in carrier.wire]
    assert kinds[:3] == ["mark", "audio", "mark"] and kinds[-2:] == ["audio", "mark"]
    assert all(kinds[i + 1] == "mark" for i, k in enumerate(kinds) if k == "audio")
    assert playout.heard_ms("a") == 1000 and playout.heard_ms("b") == 260
    assert not playout.speaking


def test_chunks_keep_the_carrier_buffer_between_the_lead_and_the_lead_plus_a_chunk():
    clock, carrier, playout = chunked_playout(chunk_ms=100)
    start = clock.t
    playout.enqueue("a", speech(3000))
    ahead = []
    while clock.t < start + 2.5:
        playout.pump()
        carrier.deliver(playout)
        ahead.append(carrier.play_end - clock.t)
        clock.t = round(clock.t + 0.005, 6)
    assert min(ahead[20:]) >= 0.080 - 1e-9        # never starved (one 5 ms step of slack)
    assert max(ahead) < 0.200                     # below lead + chunk
    assert len([1 for kind, _ in carrier.wire if kind == "audio"]) == 26   # 2.5 s + lead, 100 ms each
