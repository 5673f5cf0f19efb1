"""Signal side of the StepFun emulator: speech-like synthesis and an energy VAD (24 kHz PCM16 mono).

Synthesis
    :func:`synthesize_speech` turns a text into a deterministic voiced signal that looks like speech to
    any level/pitch/VAD analysis: a harmonic source (f0 120–220 Hz, chosen per voice, with declination
    and a per-syllable accent), shaped by three moving vowel formants, a syllable-rate envelope
    (~5 syllables/s) with short consonant noise bursts, normalised to -20 dBFS RMS. Same text and
    voice → same samples. Duration follows the text: 180 ms per CJK character, 65 ms per other
    character (spaces and punctuation included), clamped to 0.3–8 s (:func:`speech_duration_s`).

VAD threshold mapping
    ``energy_awakeness_threshold`` T (0–5000, StepFun default 2500) is mapped linearly in decibels to
    the RMS a 10 ms block must reach to count as voiced::

        threshold_dbfs = -70 + 60 * T / 5000     # 0 → -70 dBFS, 2500 → -40 dBFS, 5000 → -10 dBFS

    (0 dBFS = RMS 32768). The default therefore catches telephone speech at -20 dBFS RMS with ~20 dB of
    margin and ignores line noise below -40 dBFS. Speech starts after ``MIN_SPEECH_MS`` of voiced blocks
    (gaps of up to ``MAX_ONSET_GAP_BLOCKS`` tolerated), is reported at the start of its first voiced
    block, and stops once ``silence_duration_ms`` of unvoiced audio follows the last voiced block, whose
    end is reported as the stop position.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

SAMPLE_RATE = 24_000
BLOCK_MS = 10
BLOCK_SAMPLES = SAMPLE_RATE * BLOCK_MS // 1000
MIN_SPEECH_MS = 40
MIN_SPEECH_BLOCKS = max(1, -(-MIN_SPEECH_MS // BLOCK_MS))
MAX_ONSET_GAP_BLOCKS = 2
FULL_SCALE = 32768.0

CJK_SECONDS = 0.180
OTHER_SECONDS = 0.065
MIN_SPEECH_S = 0.3
MAX_SPEECH_S = 8.0
SPEECH_LEVEL_DBFS = -20.0

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}]")
# One token per CJK character, per word with its trailing spaces, or per run of leading spaces.
_TOKEN_RE = re.compile(f"[{_CJK}]\\s*|[^\\s{_CJK}]+\\s*|\\s+")


def threshold_to_dbfs(threshold: float) -> float:
    """Block RMS level (dBFS) that ``energy_awakeness_threshold`` stands for."""
    return -70.0 + 60.0 * float(threshold) / 5000.0


def threshold_to_rms(threshold: float) -> float:
    """Block RMS (int16 units) that ``energy_awakeness_threshold`` stands for."""
    return FULL_SCALE * 10.0 ** (threshold_to_dbfs(threshold) / 20.0)


def rms_dbfs(pcm: np.ndarray) -> float:
    """RMS level of int16 samples in dBFS (-inf for digital silence)."""
    if len(pcm) == 0:
        return float("-inf")
    rms = math.sqrt(float(np.mean(np.square(pcm.astype(np.float64)))))
    return 20.0 * math.log10(rms / FULL_SCALE) if rms > 0 else float("-inf")


# ---------------------------------------------------------------------------------------------- text timing

def _char_seconds(ch: str) -> float:
    return CJK_SECONDS if _CJK_RE.match(ch) else OTHER_SECONDS


def speech_duration_s(text: str) -> float:
    """How long :func:`synthesize_speech` speaks ``text``."""
    raw = sum(_char_seconds(ch) for ch in text.strip())
    return min(MAX_SPEECH_S, max(MIN_SPEECH_S, raw))


def _tokens(text: str) -> tuple[list[str], np.ndarray]:
    tokens = _TOKEN_RE.findall(text)
    weights = np.array([sum(_char_seconds(c) for c in tok) for tok in tokens], dtype=np.float64)
    return tokens, weights


def split_transcript(text: str, n_chunks: int) -> list[str]:
    """Spread ``text`` over ``n_chunks`` audio chunks in proportion to speaking time.

    Returns ``n_chunks`` strings (some may be empty) whose concatenation is exactly ``text``.
    """
    n_chunks = max(1, n_chunks)
    out = [""] * n_chunks
    tokens, weights = _tokens(text)
    total = float(weights.sum())
    if total <= 0:
        out[0] = text
        return out
    starts = np.concatenate([[0.0], np.cumsum(weights)[:-1]]) / total
    for tok, start in zip(tokens, starts):
        out[min(n_chunks - 1, int(start * n_chunks))] += tok
    return out


def cut_transcript(text: str, fraction: float) -> str:
    """The part of ``text`` spoken in the first ``fraction`` (0–1) of its audio, cut at token ends."""
    if fraction >= 1.0:
        return text
    tokens, weights = _tokens(text)
    total = float(weights.sum())
    if total <= 0 or fraction <= 0:
        return ""
    ends = np.cumsum(weights) / total
    kept = [tok for tok, end in zip(tokens, ends) if end <= fraction + 1e-9]
    return "".join(kept).rstrip()


# ---------------------------------------------------------------------------------------------- synthesis

# (F1, F2, F3) in Hz for a, e, i, o, u.
_VOWELS = np.array([
    (730.0, 1090.0, 2440.0),
    (530.0, 1840.0, 2480.0),
    (270.0, 2290.0, 3010.0),
    (570.0, 840.0, 2410.0),
    (300.0, 870.0, 2240.0),
])
_FORMANT_GAIN = (1.0, 0.55, 0.3)
_FORMANT_BW = (110.0, 140.0, 220.0)
_TOP_HZ = 3800.0


def voice_f0(voice: str) -> float:
    """Mean pitch (Hz, 120–220) of a voice id: stable per voice, different between voices."""
    return 120.0 + float(zlib.crc32(voice.encode("utf-8")) % 101)


@lru_cache(maxsize=64)
def synthesize_speech_bytes(text: str, voice: str = "") -> bytes:
    """:func:`synthesize_speech` as little-endian PCM16 bytes (cached)."""
    return synthesize_speech(text, voice).astype("<i2").tobytes()


def synthesize_speech(text: str, voice: str = "", *, level_dbfs: float = SPEECH_LEVEL_DBFS) -> np.ndarray:
    """Deterministic speech-like int16 signal at 24 kHz for ``text`` spoken by ``voice``."""
    sr = SAMPLE_RATE
    n = int(round(speech_duration_s(text) * sr))
    rng = np.random.default_rng(zlib.crc32(f"{voice}\x00{text}".encode("utf-8")))

    # Syllables: ~200 ms each, jittered lengths.
    n_syl = max(1, int(round(n / sr / 0.2)))
    lengths = rng.uniform(0.7, 1.3, n_syl)
    bounds = np.round(np.concatenate([[0.0], np.cumsum(lengths)]) / lengths.sum() * n).astype(int)
    centers = (bounds[:-1] + bounds[1:]) / 2.0

    envelope = np.zeros(n)
    burst = np.zeros(n)
    burst_len = int(0.025 * sr)
    for a, b in zip(bounds[:-1], bounds[1:]):
        length = b - a
        if length <= 0:
            continue
        x = (np.arange(length) + 0.5) / length
        envelope[a:b] = np.sin(np.pi * x) ** 0.6 * rng.uniform(0.75, 1.0)
        k = min(burst_len, length)
        burst[a:a + k] = np.hanning(2 * k)[:k][::-1] * rng.uniform(0.0, 0.25)
    fade = min(int(0.01 * sr), n // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        envelope[:fade] *= ramp
        envelope[n - fade:] *= ramp[::-1]

    # Pitch: declination over the utterance plus a per-syllable accent, smoothly interpolated.
    t = np.arange(n, dtype=np.float64)
    position = centers / max(n, 1)
    f0_targets = voice_f0(voice) * (1.08 - 0.16 * position) * (1.0 + rng.uniform(-0.08, 0.08, n_syl))
    f0 = np.interp(t, centers, f0_targets)
    phase = 2.0 * np.pi * np.cumsum(f0) / sr

    # Formant tracks, one vowel per syllable.
    vowels = _VOWELS[rng.integers(0, len(_VOWELS), n_syl)]
    formants = [np.interp(t, centers, vowels[:, j]) for j in range(3)]

    # Additive synthesis: harmonic k of the phase, weighted by the formant envelope at k*f0. The weights
    # change slowly, so they are computed every 5 ms and interpolated; z**k comes by recurrence.
    coarse = np.arange(0, n + 120, 120, dtype=np.float64)
    f0_c = np.interp(coarse, t, f0)
    formants_c = [np.interp(coarse, t, track) for track in formants]
    z = np.exp(1j * phase)
    zk = np.ones(n, dtype=np.complex128)
    voiced = np.zeros(n)
    for k in range(1, int(_TOP_HZ // float(f0.min())) + 1):
        zk *= z
        freq = k * f0_c
        gain = np.full(len(coarse), 0.08)
        for j in range(3):
            half_bw = _FORMANT_BW[j] / 2.0
            gain += _FORMANT_GAIN[j] / (1.0 + ((freq - formants_c[j]) / half_bw) ** 2)
        gain *= np.clip((_TOP_HZ - freq) / 300.0, 0.0, 1.0) / k
        voiced += np.interp(t, coarse, gain) * zk.imag

    noise = np.diff(rng.standard_normal(n + 1))  # first difference: a brighter, fricative-like noise
    signal = voiced * envelope + noise * (0.01 * envelope + burst) * float(np.abs(voiced).max() or 1.0)

    rms = math.sqrt(float(np.mean(signal ** 2))) if n else 0.0
    if rms > 0:
        signal *= FULL_SCALE * 10.0 ** (level_dbfs / 20.0) / rms
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------------------------------- VAD

_NO_SAMPLES = np.empty(0, dtype=np.int16)
SMALL_FEED_SAMPLES = 8 * BLOCK_SAMPLES   # up to this many samples, one dot per block


@dataclass(frozen=True)
class VadEvent:
    kind: Literal["start", "stop"]
    sample: int  # position in the whole input stream: first voiced sample (start) or end of speech (stop)


class EnergyVAD:
    """Streaming block-energy VAD over 24 kHz int16 audio; positions count every sample fed."""

    def __init__(self, threshold: int = 2500, silence_duration_ms: int = 100, *, position: int = 0) -> None:
        self.configure(threshold, silence_duration_ms)
        self.reset(position)

    def configure(self, threshold: int, silence_duration_ms: int) -> None:
        self.threshold = threshold
        self.silence_duration_ms = silence_duration_ms
        rms = threshold_to_rms(threshold)
        self._threshold_ms = rms * rms * BLOCK_SAMPLES  # compare block sums of squares
        self._silence_samples = silence_duration_ms * SAMPLE_RATE // 1000

    def reset(self, position: int | None = None) -> None:
        """Forget any speech in progress (and realign to ``position`` if given)."""
        if position is not None:
            self.position = position
            self._pending = _NO_SAMPLES
        self.speaking = False
        self._candidate: int | None = None
        self._candidate_blocks = 0
        self._gap_blocks = 0
        self._last_voiced_end = 0

    def feed(self, pcm: np.ndarray) -> list[VadEvent]:
        """Consume int16 samples; return the start/stop events they complete, in order."""
        if len(self._pending):
            pcm = np.concatenate((self._pending, pcm))
            self._pending = _NO_SAMPLES
        whole = len(pcm) - len(pcm) % BLOCK_SAMPLES
        if whole < len(pcm):
            self._pending = pcm[whole:].copy()
            pcm = pcm[:whole]
        if not whole:
            return []
        voiced_flags = self._voiced(pcm)
        # Most of a call is one state throughout a feed: silence with no onset pending, or speech going on.
        if not self.speaking and self._candidate is None and not any(voiced_flags):
            self.position += whole
            return []
        if self.speaking and all(voiced_flags):
            self.position += whole
            self._last_voiced_end = self.position
            return []
        events: list[VadEvent] = []
        for voiced in voiced_flags:
            start = self.position
            end = start + BLOCK_SAMPLES
            self.position = end
            if not self.speaking:
                if voiced:
                    if self._candidate is None:
                        self._candidate = start
                        self._candidate_blocks = 0
                    self._candidate_blocks += 1
                    self._gap_blocks = 0
                    if self._candidate_blocks >= MIN_SPEECH_BLOCKS:
                        self.speaking = True
                        self._last_voiced_end = end
                        events.append(VadEvent("start", self._candidate))
                        self._candidate = None
                elif self._candidate is not None:
                    self._gap_blocks += 1
                    if self._gap_blocks > MAX_ONSET_GAP_BLOCKS:
                        self._candidate = None
            elif voiced:
                self._last_voiced_end = end
            elif end - self._last_voiced_end >= self._silence_samples:
                self.speaking = False
                events.append(VadEvent("stop", self._last_voiced_end))
        return events

    def _voiced(self, pcm: np.ndarray) -> list[bool]:
        """Whether each block of ``pcm`` (whole blocks) reaches the threshold. Sums of squares of int16 are
        exact in float64 whatever the order, so both ways agree; an append (a few blocks) takes the one with
        the fewest numpy calls: one dot per block."""
        x = pcm.astype(np.float64)
        threshold = self._threshold_ms
        if len(x) > SMALL_FEED_SAMPLES:
            np.square(x, out=x)
            return (x.reshape(-1, BLOCK_SAMPLES).sum(axis=1) >= threshold).tolist()
        flags = []
        for i in range(0, len(x), BLOCK_SAMPLES):
            block = x[i:i + BLOCK_SAMPLES]
            flags.append(block.dot(block) >= threshold)
        return flags
