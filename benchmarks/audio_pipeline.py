"""Per-frame cost and quality of the call audio pipeline, side by side.

Run:  .venv/bin/python benchmarks/audio_pipeline.py [--frames 20000] [--repeats 7]

For each implementation, per 20 ms frame (one call, one direction):

  (a) caller -> model:  160 μ-law bytes  -> decode -> resample 8k->24k  -> 960 PCM16 bytes
  (b) model  -> caller: 960 PCM16 bytes  -> resample 24k->8k -> encode  -> 160 μ-law bytes

Bytes in, bytes out, as on the wire (the frombuffer / tobytes conversions are
included).  Implementations:

  ours     voicebot.audio.g711 tables + voicebot.audio.resample.Resampler
  audioop  ulaw2lin + ratecv / ratecv + lin2ulaw (stdlib up to 3.12, audioop-lts after)
  soxr     voicebot.audio.g711 tables + soxr.ResampleStream, quality HQ and VHQ
           (only if the soxr package is installed: pip install .[bench])

Times are the median over --repeats runs of time.perf_counter() around --frames
consecutive frames of one stream, divided by the number of frames.  The
resample-only columns time the same resampler without the G.711 step.

Quality is measured on the resampling stage alone with linear PCM16 (μ-law's own
quantisation noise, ~38 dB SNR, would mask everything), streaming in 20 ms frames,
on the last second of 1.5 s near-full-scale tones, with a Blackman-Harris window:

  stopband   how far a 5 kHz tone at 24 kHz is attenuated by 24k->8k (its alias at
             3 kHz, in dB below the input tone level);
  images     worst image (k*8 kHz +- f, below 12 kHz) of 1 kHz and 3.4 kHz tones
             after 8k->24k, in dB below the tone;
  passband   largest level change of 300 Hz .. 3.4 kHz tones, over both directions.

Figures > 100 dB mean the component is at or below the int16 rounding floor.

On this machine OPENBLAS_CORETYPE may be set (it pins OpenBLAS's kernels); that is
fine for a relative comparison, which is what this script is for.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voicebot.audio.g711 import ulaw_decode, ulaw_encode  # noqa: E402
from voicebot.audio.resample import Resampler  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # pragma: no cover - audioop-lts missing on 3.13+
        audioop = None
try:
    import soxr
except ImportError:  # pragma: no cover - optional
    soxr = None

FULL_SCALE = 32768.0


# -- pipelines: each maker returns (caller_to_model, model_to_caller, resample_up, resample_down) --
# The first two map bytes -> bytes; the last two map int16 arrays -> int16 arrays (for quality
# measurements and resample-only timing).  Each call of a maker starts fresh streams.


def make_ours():
    up, down = Resampler(8000, 24000), Resampler(24000, 8000)

    def a(ulaw: bytes) -> bytes:
        return up.process(ulaw_decode(ulaw)).tobytes()

    def b(pcm24: bytes) -> bytes:
        return ulaw_encode(down.process(np.frombuffer(pcm24, dtype=np.int16)))

    return a, b, up.process, down.process


def make_audioop():
    st = {"up": None, "down": None, "up2": None, "down2": None}

    def a(ulaw: bytes) -> bytes:
        out, st["up"] = audioop.ratecv(audioop.ulaw2lin(ulaw, 2), 2, 1, 8000, 24000, st["up"])
        return out

    def b(pcm24: bytes) -> bytes:
        out, st["down"] = audioop.ratecv(pcm24, 2, 1, 24000, 8000, st["down"])
        return audioop.lin2ulaw(out, 2)

    def up(x: np.ndarray) -> np.ndarray:
        out, st["up2"] = audioop.ratecv(x.tobytes(), 2, 1, 8000, 24000, st["up2"])
        return np.frombuffer(out, dtype=np.int16)

    def down(x: np.ndarray) -> np.ndarray:
        out, st["down2"] = audioop.ratecv(x.tobytes(), 2, 1, 24000, 8000, st["down2"])
        return np.frombuffer(out, dtype=np.int16)

    return a, b, up, down


def make_soxr(quality: str):
    def maker():
        up = soxr.ResampleStream(8000, 24000, 1, dtype="int16", quality=quality)
        down = soxr.ResampleStream(24000, 8000, 1, dtype="int16", quality=quality)

        def a(ulaw: bytes) -> bytes:
            return up.resample_chunk(ulaw_decode(ulaw)).tobytes()

        def b(pcm24: bytes) -> bytes:
            return ulaw_encode(down.resample_chunk(np.frombuffer(pcm24, dtype=np.int16)))

        return a, b, up.resample_chunk, down.resample_chunk

    return maker


# -- timing ---------------------------------------------------------------------------------


def per_frame_us(fn, frames: list, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for frame in frames:
            fn(frame)
        runs.append((time.perf_counter() - t0) / len(frames) * 1e6)
    return statistics.median(runs)


def test_signal(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-ish load: band-limited noise with a syllable envelope (content doesn't change cost)."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    spec = np.fft.rfft(rng.normal(size=n))
    spec[np.fft.rfftfreq(n, 1.0 / rate) > 3400.0] = 0.0
    x = np.fft.irfft(spec, n)
    x *= 0.5 * (1.0 - np.cos(2 * np.pi * 4.0 * np.arange(n) / rate))
    return np.round(x * (20000.0 / np.abs(x).max())).astype(np.int16)


# -- quality --------------------------------------------------------------------------------


def blackman_harris(n: int) -> np.ndarray:
    x = 2.0 * np.pi * np.arange(n) / (n - 1)
    return 0.35875 - 0.48829 * np.cos(x) + 0.14128 * np.cos(2 * x) - 0.01168 * np.cos(3 * x)


def tone_level(x: np.ndarray, rate: int, freq: float) -> float:
    x = np.asarray(x, dtype=np.float64)
    w = blackman_harris(len(x))
    mag = np.abs(np.fft.rfft(x * w)) * 2.0 / w.sum() / FULL_SCALE
    f = np.fft.rfftfreq(len(x), 1.0 / rate)
    peak = mag[np.abs(f - freq) <= 4.0 * rate / len(x)].max()
    return 20.0 * math.log10(max(peak, 1e-12))


def tone(rate: int, freq: float, amp: float = 30000.0, seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def run(fn, x: np.ndarray, frame: int, out_rate: int) -> np.ndarray:
    y = np.concatenate([np.asarray(fn(x[i:i + frame]), dtype=np.int16) for i in range(0, len(x), frame)])
    return y[len(y) - out_rate:]  # last second: past any warm-up


def quality(maker) -> tuple[float, float, float]:
    """(stopband dB, worst image dB, worst passband deviation dB)."""
    x = tone(24000, 5000.0)
    down = maker()[3]
    stop = tone_level(x[-24000:], 24000, 5000.0) - tone_level(run(down, x, 480, 8000), 8000, 3000.0)

    image = math.inf
    for f in (1000.0, 3400.0):
        y = run(maker()[2], tone(8000, f), 160, 24000)
        ref = tone_level(y, 24000, f)
        for k in (1, 2):
            for s in (-1, 1):
                im = k * 8000.0 + s * f
                if 0.0 < im < 12000.0:
                    image = min(image, ref - tone_level(y, 24000, im))

    dev = 0.0
    for f in (300.0, 1000.0, 2000.0, 3000.0, 3400.0):
        x8, x24 = tone(8000, f), tone(24000, f)
        y24 = run(maker()[2], x8, 160, 24000)
        y8 = run(maker()[3], x24, 480, 8000)
        dev = max(dev, abs(tone_level(y24, 24000, f) - tone_level(x8[-8000:], 8000, f)),
                  abs(tone_level(y8, 8000, f) - tone_level(x24[-24000:], 24000, f)))
    return stop, image, dev


def fmt_db(v: float) -> str:
    return ">100" if v > 100.0 else f"{v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    impls = [("ours (g711 + Resampler)", make_ours)]
    if audioop is not None:
        impls.append(("audioop (ratecv)", make_audioop))
    if soxr is not None:
        impls.append(("soxr HQ (g711 + ResampleStream)", make_soxr("HQ")))
        impls.append(("soxr VHQ (g711 + ResampleStream)", make_soxr("VHQ")))

    x8 = test_signal(8000, 2.0)
    x24 = test_signal(24000, 2.0, seed=1)
    ulaw_frames = [ulaw_encode(x8[i:i + 160]) for i in range(0, len(x8), 160)]
    pcm8_frames = [x8[i:i + 160] for i in range(0, len(x8), 160)]
    pcm24_frames = [x24[i:i + 480] for i in range(0, len(x24), 480)]
    pcm24_bytes = [f.tobytes() for f in pcm24_frames]

    def cycle(frames: list) -> list:
        return [frames[i % len(frames)] for i in range(args.frames)]

    ulaw_frames, pcm8_frames = cycle(ulaw_frames), cycle(pcm8_frames)
    pcm24_frames, pcm24_bytes = cycle(pcm24_frames), cycle(pcm24_bytes)

    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"soxr {getattr(soxr, '__version__', 'not installed')}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, {platform.machine()}")
    print(f"{args.frames} frames of 20 ms per run, median of {args.repeats} runs; "
          f"quality on the resampler alone (linear PCM16)\n")
    head = (f"{'implementation':34} {'(a) ulaw->24k':>13} {'(b) 24k->ulaw':>13} {'8k->24k':>8} {'24k->8k':>8}"
            f" {'stopband':>9} {'images':>7} {'passband':>9}")
    print(head)
    print(f"{'':34} {'us/frame':>13} {'us/frame':>13} {'rs only':>8} {'rs only':>8}"
          f" {'5k dB':>9} {'dB':>7} {'dev dB':>9}")
    print("-" * len(head))
    for name, maker in impls:
        a, b, _, _ = maker()
        t_a = per_frame_us(a, ulaw_frames, args.repeats)
        t_b = per_frame_us(b, pcm24_bytes, args.repeats)
        _, _, up, down = maker()
        t_up = per_frame_us(up, pcm8_frames, args.repeats)
        t_down = per_frame_us(down, pcm24_frames, args.repeats)
        stop, image, dev = quality(maker)
        print(f"{name:34} {t_a:13.2f} {t_b:13.2f} {t_up:8.2f} {t_down:8.2f}"
              f" {fmt_db(stop):>9} {fmt_db(image):>7} {dev:9.4f}")


if __name__ == "__main__":
    main()
