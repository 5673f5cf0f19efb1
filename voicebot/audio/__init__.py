"""Audio inside a call: PCM16 mono 8 kHz numpy int16 arrays in 20 ms frames."""

RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000  # 160
FRAME_BYTES = FRAME_SAMPLES * 2
