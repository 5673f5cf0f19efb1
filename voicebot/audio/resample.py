"""Streaming polyphase FIR resampler for PCM16 mono, pure numpy.

Design
------
A rate change ``src -> dst`` is reduced to ``L/M`` (``L = dst/g``, ``M = src/g``,
``g = gcd(src, dst)``): conceptually upsample by ``L`` (zero stuffing), low-pass
filter at the upsampled rate ``L*src``, keep every ``M``-th sample.

The low-pass is a linear-phase Kaiser-windowed sinc designed here with
``np.sinc`` / ``np.kaiser``:

* cut-off at the Nyquist frequency of the lower of the two rates (4 kHz when
  one side is 8 kHz);
* transition band ``0.85 .. 1.15`` x that Nyquist, i.e. 3.4 kHz .. 4.6 kHz at the
  8 kHz side: tones up to 3.4 kHz pass (ripple ~0.001 dB), images / aliases that
  land at or beyond 4.6 kHz are >= 80 dB (design) down;
* length from Kaiser's formula for 80 dB, rounded up so that the group delay is a
  whole number of samples at both rates (8k<->24k: 103 taps at 24 kHz,
  8k<->16k: 69 taps at 16 kHz, 16k<->24k: 109 taps at 48 kHz).

The taps are rounded to multiples of 2**-24 (effect on the response < -120 dB).
With int16 input every product and every partial sum is then a multiple of
2**-24 well below 2**24 in magnitude, i.e. exact in float64's 53-bit mantissa, so
the result does not depend on how BLAS groups or orders the sums: streaming
output (any split into frames) is bit-identical to one-shot output and to a plain
``np.convolve`` of the zero-stuffed signal.

Hot path
--------
The filter bank for a ratio is built once and cached module-level, keyed by
``(src, dst)``.  Each stream keeps a float64 buffer ``[history | pending | new]``.
Output is computed in rows of ``Q`` ratio periods (a period consumes ``M`` input
samples and yields ``L`` output samples): the overlapping input windows for the
rows (one strided view, precomputed per stream) are copied into one small
contiguous matrix and multiplied by a precomputed banded ``(P + Q*M, Q*L)``
matrix -- one BLAS gemm per frame.  A 20 ms frame costs about a dozen numpy
calls and no Python loop.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["Resampler"]

_ATTEN_DB = 80.0  # Kaiser design target for the stopband
_PASS_FRAC = 0.85  # passband edge / Nyquist of the lower rate (3.4 kHz at 8 kHz)
_STOP_FRAC = 1.15  # stopband edge / Nyquist of the lower rate (4.6 kHz at 8 kHz)
_COEF_BITS = 24  # taps are multiples of 2**-_COEF_BITS (keeps float64 sums exact)
_ROW_TARGET = 48  # aim for about this many input (and output) samples per gemm row
_FRAME_PERIODS = 160  # ratio periods in 20 ms when gcd(src, dst) == 8000
_MAX_PERIODS = 800  # at most this many periods per internal chunk (bounds buffers); 800: a 100 ms delta at 24 kHz is one gemm
_MAX_TAPS = 1 << 16
_HI = np.array(32767.0)  # 0-d arrays: cheaper ufunc operands than Python floats
_LO = np.array(-32768.0)


class _Bank:
    """Everything that depends only on (src, dst); shared by all streams."""

    __slots__ = ("L", "M", "taps", "T", "P", "Q", "row_in", "row_out", "H", "delay", "h")

    def __init__(self, src: int, dst: int) -> None:
        g = math.gcd(src, dst)
        L, M = dst // g, src // g
        self.L, self.M = L, M
        fu = src * L  # rate at which the prototype low-pass runs
        nyq = min(src, dst) / 2.0
        df = (_STOP_FRAC - _PASS_FRAC) * nyq
        beta = 0.1102 * (_ATTEN_DB - 8.7)
        n_taps = math.ceil((_ATTEN_DB - 7.95) / (2.285 * 2.0 * math.pi * df / fu)) + 1
        step = 2 * L * M  # (n_taps - 1) / 2 divisible by L*M -> integer delays
        if step > n_taps // 4:
            step = 2  # awkward ratio (e.g. 44.1k <-> 48k): just keep the length odd
        n_taps = 1 + step * math.ceil((n_taps - 1) / step)
        if L == M == 1:
            n_taps = 1  # same rate: plain copy
        if n_taps > _MAX_TAPS:
            raise ValueError(f"resampling ratio {src}->{dst} needs an unreasonably long filter")
        t = np.arange(n_taps) - (n_taps - 1) / 2.0
        fc = nyq / fu  # cut-off in cycles per (upsampled) sample
        h = 2.0 * fc * np.sinc(2.0 * fc * t) * np.kaiser(n_taps, beta)
        h *= L / h.sum()  # unity gain at DC (zero stuffing loses a factor L)
        scale = float(1 << _COEF_BITS)
        h = np.round(h * scale) / scale
        self.h = h
        self.taps = n_taps
        # Group delay: (n_taps - 1) / 2 upsampled samples = that / M output samples
        # (exact for the telephony ratios, nearest integer for awkward ones).
        self.delay = round((n_taps - 1) / (2 * M))

        T = -(-n_taps // L)  # taps per polyphase branch
        hp = np.zeros(T * L)
        hp[:n_taps] = h
        self.T = T
        self.P = P = T - 1  # input history needed before the first sample of a period

        # Periods per gemm row: a divisor of 160 (a 20 ms frame for the common rates)
        # near _ROW_TARGET samples per row on the busier side.
        want = max(1, _ROW_TARGET // max(L, M))
        self.Q = Q = max(d for d in range(1, _FRAME_PERIODS + 1) if _FRAME_PERIODS % d == 0 and d <= want)
        self.row_in, self.row_out = Q * M, Q * L

        # Banded matrix: output j of period q in a row is
        #   sum_i hp[p_j + L*i] * row[P + q*M + d_j - i],
        # with d_j = floor(j*M/L), p_j = j*M mod L, row = input[-P : Q*M] of that row.
        H = np.zeros((P + Q * M, Q * L))
        i = np.arange(T)
        for q in range(Q):
            for j in range(L):
                d_j, p_j = divmod(j * M, L)
                H[P + q * M + d_j - i, q * L + j] = hp[p_j + L * i]
        self.H = H


_BANKS: dict[tuple[int, int], _Bank] = {}


def _bank(src: int, dst: int) -> _Bank:
    key = (src, dst)
    bank = _BANKS.get(key)
    if bank is None:
        bank = _BANKS[key] = _Bank(src, dst)
    return bank


class Resampler:
    """Streaming int16 resampler ``src_rate -> dst_rate`` (any rational ratio).

    ``process`` takes int16 samples of any length and returns the int16 output
    available so far (rounded to nearest, clipped to int16).  Input is consumed in
    periods of ``M`` samples (``M = src_rate / gcd``); when the input length is a
    multiple of ``M`` the output length is exactly ``len * dst_rate / src_rate``
    (160 -> 480 for 8k -> 24k, 480 -> 160 for 24k -> 8k, 160 -> 320 for 8k -> 16k).
    Otherwise up to ``M - 1`` samples wait for the next call.  Splitting a signal
    into frames of any sizes gives exactly the same samples as one call.

    ``delay_samples`` is the group delay in *output* samples: an input sample at
    input time ``t`` (seconds) is centred at output index
    ``t * dst_rate + delay_samples``.  8k->24k: 51 (2.125 ms), 24k->8k: 17,
    8k->16k: 34, 16k->8k: 17, 16k->24k: 27, 24k->16k: 18 (so 8k->24k->8k is
    34 samples at 8 kHz, 4.25 ms).  The filter starts from silence (zero
    history), so about the first ``2 * delay_samples`` output samples are warm-up.

    Not thread-safe: one instance per stream and direction.
    """

    __slots__ = ("src_rate", "dst_rate", "delay_samples", "_buf", "_fill", "_rows", "_P", "_M", "_L",
                 "_Q", "_H", "_row_in", "_cap", "_plans", "_head")

    def __init__(self, src_rate: int, dst_rate: int):
        src_rate, dst_rate = int(src_rate), int(dst_rate)
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError("sample rates must be positive")
        self.src_rate, self.dst_rate = src_rate, dst_rate
        bank = _bank(src_rate, dst_rate)
        self._P, self._M, self._L, self._Q = bank.P, bank.M, bank.L, bank.Q
        self._H, self._row_in = bank.H, bank.row_in
        self.delay_samples: int = bank.delay
        # Buffer: P samples of history, then at most _MAX_PERIODS periods (+ a partial one).
        size = bank.P + (_MAX_PERIODS + 1) * bank.M
        self._buf = np.zeros(size)
        self._cap = size
        self._fill = bank.P
        self._head = self._buf[:bank.P]
        n_rows = (size - bank.P) // bank.row_in
        item = self._buf.itemsize
        # Row g is buf[g*row_in : g*row_in + P + row_in] (overlapping windows).
        self._rows = as_strided(self._buf, shape=(n_rows, bank.P + bank.row_in),
                                strides=(bank.row_in * item, item), writeable=False)
        # Per input length: preallocated views / scratch for the steady state (no pending input).
        self._plans: dict[int, tuple] = {}

    def reset(self) -> None:
        """Forget all history and pending input (start as a new stream)."""
        self._buf[:] = 0.0
        self._fill = self._P

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Resample the next chunk of a stream; int16 in, int16 out."""
        n = len(pcm)
        plan = self._plans.get(n) if self._fill == self._P else None
        if plan is None:
            plan = self._plan(n)
            if plan is None:
                return self._process_general(pcm)
        dst, rows, z, y, y1, tail = plan
        # Slice assignment: the same copies as np.copyto, without its argument parsing (~2 µs a frame).
        dst[:] = pcm
        z[...] = rows
        np.dot(z, self._H, out=y)
        self._head[:] = tail
        np.rint(y1, out=y1)
        np.minimum(y1, _HI, out=y1)
        np.maximum(y1, _LO, out=y1)
        return y1.astype(np.int16)

    def _plan(self, n: int):
        """Scratch for frames of n samples arriving with no pending input (the usual case)."""
        P = self._P
        if self._fill != P or n == 0 or n % self._row_in or P + n > self._cap or len(self._plans) >= 4:
            return None
        rows = n // self._row_in
        y = np.empty((rows, self._H.shape[1]))
        plan = (self._buf[P:P + n], self._rows[:rows], np.empty(self._rows[:rows].shape), y, y.reshape(-1),
                self._buf[n:n + P])
        self._plans[n] = plan
        return plan

    # -- general path (odd frame sizes, pending samples); same arithmetic, hence same samples --

    def _process_general(self, pcm: np.ndarray) -> np.ndarray:
        n = len(pcm)
        fill = self._fill
        end = fill + n
        if end > self._cap:
            step = _MAX_PERIODS * self._M
            out = [self._process_general(pcm[i:i + step]) for i in range(0, n, step)]
            return np.concatenate(out) if out else np.empty(0, np.int16)
        buf = self._buf
        buf[fill:end] = pcm
        M, Q = self._M, self._Q
        periods = (end - self._P) // M
        if periods == 0:
            self._fill = end
            return np.empty(0, np.int16)
        rows, rem = divmod(periods, Q)
        parts = []
        if rows:
            parts.append(np.dot(self._rows[:rows].copy(), self._H).reshape(-1))
        if rem:
            start = rows * self._row_in
            seg = buf[start:start + self._P + rem * M]
            parts.append(np.dot(seg, self._H[:len(seg), :rem * self._L]))
        y = np.concatenate(parts) if len(parts) > 1 else parts[0]
        used = periods * M
        keep = end - used
        buf[:keep] = buf[used:end]
        self._fill = keep
        np.rint(y, out=y)
        np.minimum(y, _HI, out=y)
        np.maximum(y, _LO, out=y)
        return y.astype(np.int16)
