"""``voicebot voices preview · clone · list``: hear and clone a voice from a reference clip (stepfun-api.md §5).

    voicebot voices preview --audio sample.wav --text "<what the clip says>" [--sample-text "…"] [--out x.wav]
    voicebot voices clone   --audio sample.wav --text "<what the clip says>"      # prints voice-tone-…
    voicebot voices list    [--limit 20] [--after voice-tone-…]

* The clip is checked here before anything is uploaded: WAV (PCM) or MP3 (Layer III), mono, 3–60 s (StepFun
  recommends 5–10 s; outside that a warning is printed), at least 1 s of audible sound, at most 32 MiB.
* ``preview`` and ``clone`` upload the clip through ``POST {files base}/files`` first. StepFun does not say
  whether ``/step_plan/v1/files`` exists: ``STEPFUN_FILES_BASE_URL`` and ``STEPFUN_FILES_API_KEY`` send the
  upload elsewhere (e.g. the open platform, ``https://api.stepfun.com/v1``), and a 404 on the Step Plan path
  prints exactly that advice.
* Where requests go: ``--base-url`` if given; else, with ``STEP_API_KEY``, the configured StepFun base URL
  (``STEPFUN_BASE_URL`` or config.yaml); else ``STEPFUN_BASE_URL`` if set (a running ``voicebot emulator``);
  else an emulator started inside this process, announced loudly (a voice cloned there dies with it).
* ``clone`` writes only the voice id to stdout, so ``VOICE=$(voicebot voices clone …)`` works; every note,
  warning and error goes to stderr. The API key is never printed.
* Exit status: 0 done, 1 StepFun refused or could not be reached, 2 the clip or an option is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, AsyncIterator, Mapping
from urllib.parse import urlsplit

import numpy as np

from .config import ConfigError, load_settings
from .stepfun.errors import StepFunError
from .stepfun.http import normalize_base_url

MIN_CLIP_S = 3.0                      # the 2.5 TTS model page: 3 s is enough
RECOMMENDED_CLIP_S = (5.0, 10.0)      # §5: "mp3 or wav, 5–10 s"
MAX_CLIP_S = 60.0                     # longer is not a reference clip; StepFun's advice is 10 s
MAX_CLIP_BYTES = 32 * 1024 * 1024     # 60 s of mono 96 kHz 32-bit PCM is 23 MB; StepFun's own limit is 128 MB
MIN_AUDIBLE_S = 1.0                   # this much of the clip must be above AUDIBLE_DBFS
AUDIBLE_DBFS = -50.0
SAMPLE_TEXT_ADVICE = 50               # §5: keep sample_text ≤ ~50 characters
DEFAULT_SAMPLE_TEXTS = {
    "en": "Hello, this is a preview of my cloned voice.",
    "zh": "你好，这是我克隆的声音的试听。",
}
STEP_PLAN_PATH = "/step_plan/"
OPEN_PLATFORM_BASE_URL = "https://api.stepfun.com/v1"
EMULATOR_KEY = "voicebot-emulator"    # sent to emulators, which take any non-empty bearer key
EXIT_OK, EXIT_STEPFUN, EXIT_USAGE = 0, 1, 2

_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


class ClipError(ValueError):
    """The reference clip cannot be used; the message says why and what to do."""


class UsageError(Exception):
    """An option or environment value is wrong (exit status 2)."""


@dataclass
class Clip:
    path: Path
    data: bytes
    kind: str                 # "wav" or "mp3"
    seconds: float
    rate: int
    channels: int
    warnings: list[str] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return "audio/mpeg" if self.kind == "mp3" else "audio/wav"

    @property
    def filename(self) -> str:
        suffix = "." + self.kind
        return self.path.name if self.path.name.lower().endswith(suffix) else self.path.stem + suffix


# ---------------------------------------------------------------------------------------------- the clip

def check_clip(path: str | os.PathLike[str]) -> Clip:
    """Read and check a reference clip; :class:`ClipError` says what is wrong with it."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ClipError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not path.is_file():
        raise ClipError(f"{path}: not a file")
    if size > MAX_CLIP_BYTES:
        raise ClipError(f"{path}: {size / 1e6:.1f} MB is too large for a reference clip (at most "
                        f"{MAX_CLIP_BYTES // (1024 * 1024)} MiB; StepFun wants 5–10 s of speech)")
    if size == 0:
        raise ClipError(f"{path}: the file is empty")
    data = path.read_bytes()
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        clip = _wav_clip(path, data)
    elif data[:3] == b"ID3" or _mp3_frame(data, 0) is not None:
        clip = _mp3_clip(path, data)
    else:
        raise ClipError(f"{path}: not a WAV or MP3 file (StepFun takes mp3 or wav reference clips)")
    if clip.channels != 1:
        raise ClipError(f"{path}: {clip.channels} channels; the clip must be mono, one speaker (a call recording "
                        "holds two voices). Convert it, e.g. `sox in.wav -c 1 out.wav` or "
                        "`ffmpeg -i in.wav -ac 1 out.wav`")
    if clip.seconds < MIN_CLIP_S:
        raise ClipError(f"{path}: {clip.seconds:.1f} s is too short; StepFun needs at least {MIN_CLIP_S:g} s of "
                        f"speech ({RECOMMENDED_CLIP_S[0]:g}–{RECOMMENDED_CLIP_S[1]:g} s recommended)")
    if clip.seconds > MAX_CLIP_S:
        raise ClipError(f"{path}: {clip.seconds:.1f} s is too long for a reference clip (at most "
                        f"{MAX_CLIP_S:g} s here; StepFun recommends {RECOMMENDED_CLIP_S[0]:g}–"
                        f"{RECOMMENDED_CLIP_S[1]:g} s): cut one clean stretch of speech out of it")
    lo, hi = RECOMMENDED_CLIP_S
    if not lo <= clip.seconds <= hi:
        clip.warnings.append(f"the clip lasts {clip.seconds:.1f} s; StepFun recommends {lo:g}–{hi:g} s of clean "
                             "speech for cloning")
    return clip


def _wav_clip(path: Path, data: bytes) -> Clip:
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            pcm = w.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise ClipError(f"{path}: not a readable PCM WAV ({exc}); convert it to 16-bit PCM, e.g. "
                        "`sox in.wav -b 16 out.wav`") from None
    if rate <= 0:
        raise ClipError(f"{path}: WAV header has sample rate {rate}")
    frames = len(pcm) // (width * channels)
    clip = Clip(path, data, "wav", frames / rate, rate, channels)
    if channels == 1 and frames:
        samples = _pcm_to_float(pcm[:frames * width], width)
        block = max(1, rate // 50)                         # 20 ms blocks
        n = len(samples) // block
        if n:
            rms = np.sqrt(np.mean(samples[:n * block].reshape(n, block) ** 2, axis=1))
            audible_s = float(np.count_nonzero(20 * np.log10(rms + 1e-12) > AUDIBLE_DBFS)) * block / rate
        else:
            audible_s = 0.0
        if audible_s < MIN_AUDIBLE_S and clip.seconds >= MIN_CLIP_S:
            raise ClipError(f"{path}: the clip is (nearly) silent: only {audible_s:.1f} s is above "
                            f"{AUDIBLE_DBFS:g} dBFS; record the voice louder or closer to the microphone")
    return clip


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    """Little-endian PCM of 1–4 bytes per sample (8-bit is unsigned) → floats in [-1, 1)."""
    if width == 1:
        return (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float64) / 32768.0
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return np.where(v >= 1 << 23, v - (1 << 24), v).astype(np.float64) / float(1 << 23)
    return np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)


# MPEG audio Layer III frame headers (ISO 11172-3 / 13818-3): enough to count frames for the duration.
_MP3_BITRATES = {1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),       # MPEG-1
                 2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}           # MPEG-2 / 2.5
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mp3_frame(data: bytes, i: int) -> tuple[int, int, int, int] | None:
    """(frame length, samples, sample rate, channels) of a Layer III frame header at ``i``, else None."""
    if i + 4 > len(data) or data[i] != 0xFF or data[i + 1] & 0xE0 != 0xE0:
        return None
    b1, b2, b3 = data[i + 1], data[i + 2], data[i + 3]
    version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_idx, rate_idx, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if version == 1 or layer != 1 or bitrate_idx in (0, 15) or rate_idx == 3:
        return None
    kbps = _MP3_BITRATES[1 if version == 3 else 2][bitrate_idx]
    rate = _MP3_RATES[version][rate_idx]
    samples = 1152 if version == 3 else 576
    length = samples // 8 * kbps * 1000 // rate + padding
    return length, samples, rate, 1 if b3 >> 6 == 3 else 2


def _mp3_clip(path: Path, data: bytes) -> Clip:
    i = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        size = (data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F)
        i = 10 + size + (10 if data[5] & 0x10 else 0)
    # The first frame: a header whose successor is a header too (a lone 0xFFE… may be tag data).
    start = None
    for j in range(i, min(len(data), i + 64 * 1024)):
        head = _mp3_frame(data, j)
        if head is not None and (j + head[0] >= len(data) or _mp3_frame(data, j + head[0]) is not None):
            start = j
            break
    if start is None:
        raise ClipError(f"{path}: not a WAV or MP3 file (no MPEG Layer III audio frames found)")
    frames = samples = 0
    rate = channels = 0
    j = start
    while (head := _mp3_frame(data, j)) is not None:
        length, n, rate_j, channels_j = head
        if frames == 0:
            rate, channels = rate_j, channels_j
        frames += 1
        samples += n
        channels = max(channels, channels_j)
        j += length
    return Clip(path, data, "mp3", samples / rate, rate, channels)


# ---------------------------------------------------------------------------------------------- where to

@dataclass
class Target:
    base_url: str
    api_key: str | None
    files_base_url: str | None = None
    files_api_key: str | None = None
    emulator: str | None = None      # "in-process" or "external" when no real StepFun key is in use

    @property
    def upload_url(self) -> str:
        return f"{self.files_base_url or self.base_url}/files"


def _with_prefix(url: str) -> str:
    """A bare ``http://host:port`` (e.g. a ``voicebot emulator``) gets the Step Plan prefix."""
    try:
        url = normalize_base_url(url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return url + "/step_plan/v1" if urlsplit(url).path in ("", "/") else url


@contextlib.asynccontextmanager
async def open_target(args: argparse.Namespace, err: IO[str],
                      environ: Mapping[str, str]) -> AsyncIterator[Target]:
    """Where the requests go (see the module docstring); starts and stops an in-process emulator if needed."""
    settings = load_settings(getattr(args, "config", None), dict(environ))
    key = settings.stepfun.api_key
    files_base = environ.get("STEPFUN_FILES_BASE_URL") or None
    files_key = environ.get("STEPFUN_FILES_API_KEY") or None
    if getattr(args, "base_url", None) or (not key and environ.get("STEPFUN_BASE_URL")):
        base = _with_prefix(args.base_url or environ["STEPFUN_BASE_URL"])
        target = Target(base, key or EMULATOR_KEY, files_base and _with_prefix(files_base), files_key,
                        None if key else "external")
        if not key:
            _say(err, f"note: no STEP_API_KEY set: talking to {base} with a placeholder key (right for "
                      "`voicebot emulator`; the real StepFun API will answer 401)")
        yield target
        return
    if key:
        _say(err, f"StepFun: {settings.stepfun.base_url}")
        yield Target(settings.stepfun.base_url, key, files_base and _with_prefix(files_base), files_key)
        return

    from .emulator.app import start_emulator

    runner, emulator = await start_emulator("127.0.0.1", 0)
    _say(err, "=" * 78)
    _say(err, "NO STEP_API_KEY SET: using a StepFun EMULATOR started inside this command, NOT the real StepFun")
    _say(err, "API. Its audio is synthetic, and anything it creates (files, cloned voices) is gone when this")
    _say(err, "command exits. Set STEP_API_KEY to use StepFun, or run `voicebot emulator --port 9000` and pass")
    _say(err, "--base-url http://127.0.0.1:9000 to keep a clone in a running emulator.")
    _say(err, "=" * 78)
    if files_base or files_key:
        _say(err, "note: STEPFUN_FILES_BASE_URL / STEPFUN_FILES_API_KEY are ignored with the in-process emulator")
    try:
        yield Target(emulator.base_url, EMULATOR_KEY, emulator="in-process")
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------------------------- commands

def _say(stream: IO[str], text: str) -> None:
    print(text, file=stream, flush=True)


def _stepfun_failed(err: IO[str], command: str, step: str, url: str, exc: StepFunError,
                    target: Target) -> int:
    if exc.status is None:
        _say(err, f"voicebot voices {command}: {step} failed: could not get an answer from {url}: {exc.message}")
    else:
        kind = f" ({exc.type})" if exc.type else ""
        _say(err, f"voicebot voices {command}: {step} failed: StepFun answered HTTP {exc.status}{kind}: "
                  f"{exc.message}")
    _say(err, f"  X-Trace-Id: {exc.trace_id or '(none in the answer)'}"
              + ("  (quote it to StepFun support)" if exc.trace_id else ""))
    if step == "upload" and exc.status == 404 and STEP_PLAN_PATH in urlsplit(url).path + "/":
        _say(err, f"  {url} does not exist for this key: StepFun does not document /step_plan/v1/files "
                  "(stepfun-api.md §5). Upload through the open platform instead:")
        _say(err, f"    export STEPFUN_FILES_BASE_URL={OPEN_PLATFORM_BASE_URL}")
        _say(err, "    export STEPFUN_FILES_API_KEY=<an open-platform API key>")
        _say(err, "  (STEP_API_KEY stays the Step Plan key, used for preview and clone.)")
    elif exc.status in (401, 403):
        which = "STEPFUN_FILES_API_KEY" if step == "upload" and target.files_api_key else "STEP_API_KEY"
        _say(err, f"  check {which}" + (" (a Step Plan key belongs on /step_plan/v1 URLs)" if which ==
                                        "STEP_API_KEY" else ""))
    return EXIT_STEPFUN


def _sample_text(args: argparse.Namespace, err: IO[str]) -> str:
    if args.sample_text:
        text = args.sample_text.strip()
        if len(text) > SAMPLE_TEXT_ADVICE:
            _say(err, f"warning: --sample-text has {len(text)} characters; StepFun advises at most about "
                      f"{SAMPLE_TEXT_ADVICE}")
        return text
    language = args.language or ("zh" if args.text and _CJK.search(args.text) else "en")
    text = DEFAULT_SAMPLE_TEXTS[language]
    how = "--language" if args.language else ("the transcript's language" if args.text else "no --text to go by")
    _say(err, f"note: no --sample-text: the preview says {text!r} ({language}, from {how}; "
              "pass --sample-text or --language zh|en to change it)")
    return text


def _clip_or_exit(args: argparse.Namespace, err: IO[str], command: str) -> Clip | None:
    try:
        clip = check_clip(args.audio)
    except ClipError as exc:
        _say(err, f"voicebot voices {command}: {exc}")
        return None
    _say(err, f"clip {clip.path}: {clip.kind}, {clip.seconds:.1f} s, {clip.rate} Hz mono, {len(clip.data)} bytes")
    for warning in clip.warnings:
        _say(err, f"warning: {warning}")
    if not args.text:
        _say(err, "note: no --text: StepFun will transcribe the clip itself; giving its transcript is recommended")
    return clip


def _voices_client(http, target: Target):
    from .stepfun.voices import VoicesClient
    return VoicesClient(http, target.base_url, target.api_key, files_base_url=target.files_base_url,
                        files_api_key=target.files_api_key)


async def _upload(voices, clip: Clip, target: Target, err: IO[str], command: str):
    if target.files_base_url:
        _say(err, f"uploading to {target.upload_url} (STEPFUN_FILES_BASE_URL)")
    try:
        uploaded = await voices.upload(clip.data, clip.filename, content_type=clip.content_type)
    except StepFunError as exc:
        return None, _stepfun_failed(err, command, "upload", target.upload_url, exc, target)
    _say(err, f"uploaded {clip.filename}: {uploaded.id}")
    return uploaded, EXIT_OK


async def cmd_preview(args: argparse.Namespace, out: IO[str], err: IO[str], environ: Mapping[str, str]) -> int:
    import aiohttp

    clip = _clip_or_exit(args, err, "preview")
    if clip is None:
        return EXIT_USAGE
    sample_text = _sample_text(args, err)
    if args.instruction is not None and len(args.instruction) > 200:
        _say(err, f"voicebot voices preview: --instruction has {len(args.instruction)} characters; "
                  "the limit is 200")
        return EXIT_USAGE
    async with open_target(args, err, environ) as target, aiohttp.ClientSession() as http:
        voices = _voices_client(http, target)
        uploaded, status = await _upload(voices, clip, target, err, "preview")
        if uploaded is None:
            return status
        try:
            preview = await voices.preview(uploaded.id, sample_text, text=args.text or None,
                                           instruction=args.instruction)
        except StepFunError as exc:
            return _stepfun_failed(err, "preview", "preview", f"{target.base_url}/audio/voices/preview", exc,
                                   target)
    out_path = Path(args.out)
    try:
        out_path.write_bytes(preview.wav)
    except OSError as exc:
        _say(err, f"voicebot voices preview: cannot write {out_path}: {exc.strerror or exc}")
        return EXIT_USAGE
    try:
        with wave.open(io.BytesIO(preview.wav), "rb") as w:
            length = f"{w.getnframes() / w.getframerate():.1f} s at {w.getframerate()} Hz"
    except (wave.Error, EOFError, ZeroDivisionError):
        length = "not a WAV StepFun sent; saved as received"
    _say(err, f"preview of {sample_text!r} written to {out_path} ({length}); no voice was created"
              + (" (emulator: synthetic audio)" if target.emulator else ""))
    print(out_path, file=out)
    return EXIT_OK


async def cmd_clone(args: argparse.Namespace, out: IO[str], err: IO[str], environ: Mapping[str, str]) -> int:
    import aiohttp

    clip = _clip_or_exit(args, err, "clone")
    if clip is None:
        return EXIT_USAGE
    async with open_target(args, err, environ) as target, aiohttp.ClientSession() as http:
        if not target.emulator:
            _say(err, "note: StepFun bills a clone (9.9 元 per voice) when it succeeds")
        voices = _voices_client(http, target)
        uploaded, status = await _upload(voices, clip, target, err, "clone")
        if uploaded is None:
            return status
        try:
            voice = await voices.clone(uploaded.id, text=args.text or None)
        except StepFunError as exc:
            return _stepfun_failed(err, "clone", "clone", f"{target.base_url}/audio/voices", exc, target)
        print(voice.id, file=out, flush=True)
        if voice.duplicated:
            _say(err, "note: StepFun says this file was cloned before (duplicated): same voice id")
        _say(err, f"cloned voice {voice.id}: use it as `voice: {voice.id}` in a persona (realtime and chain "
                  "engines alike)")
        if target.emulator == "in-process":
            _say(err, f"WARNING: {voice.id} exists only in the in-process emulator, which stops now: it is NOT a "
                      "StepFun voice and no server will know it")
        elif target.emulator == "external":
            _say(err, f"note: {voice.id} exists only in the emulator at {target.base_url} while it runs")
    return EXIT_OK


async def cmd_list(args: argparse.Namespace, out: IO[str], err: IO[str], environ: Mapping[str, str]) -> int:
    import aiohttp

    if not 1 <= args.limit <= 100:
        _say(err, f"voicebot voices list: --limit must be 1–100, got {args.limit}")
        return EXIT_USAGE
    async with open_target(args, err, environ) as target, aiohttp.ClientSession() as http:
        voices = _voices_client(http, target)
        try:
            page = await voices.list(limit=args.limit, after=args.after)
        except StepFunError as exc:
            return _stepfun_failed(err, "list", "list", f"{target.base_url}/audio/voices", exc, target)
    if not page.voices:
        _say(err, "no cloned voices" + (" (a fresh in-process emulator has none)"
                                        if target.emulator == "in-process" else ""))
    for v in page.voices:
        created = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.created_at)) + " UTC"
                   if isinstance(v.created_at, (int, float)) else "-")
        print(f"{v.id}\t{v.file_id or '-'}\t{created}", file=out)
    if page.has_more:
        _say(err, f"more voices: voicebot voices list --after {page.last_id}")
    return EXIT_OK


COMMANDS = {"preview": cmd_preview, "clone": cmd_clone, "list": cmd_list}


async def run(args: argparse.Namespace, *, out: IO[str] | None = None, err: IO[str] | None = None,
              environ: Mapping[str, str] | None = None) -> int:
    """Run one parsed ``voicebot voices …`` command; returns the exit status."""
    err = err or sys.stderr
    try:
        return await COMMANDS[args.voices_command](args, out or sys.stdout, err,
                                                   os.environ if environ is None else environ)
    except (UsageError, ConfigError) as exc:
        _say(err, f"voicebot voices {args.voices_command}: {exc}")
        return EXIT_USAGE


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``voices`` with its ``preview``, ``clone`` and ``list`` sub-commands to ``sub`` (argparse subparsers)."""
    voices = sub.add_parser("voices", help="preview, clone and list StepFun voices from a reference clip",
                            description="Voice preview and cloning (StepFun /files, /audio/voices). Without "
                                        "STEP_API_KEY an in-process emulator answers.")
    vsub = voices.add_subparsers(dest="voices_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="config file (default: $VOICEBOT_CONFIG or ./config.yaml)")
        p.add_argument("--base-url", help="StepFun (or emulator) base URL, e.g. http://127.0.0.1:9000 for "
                                          "`voicebot emulator --port 9000`")

    def clip_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--audio", required=True, help="reference clip: WAV or MP3, mono, 5–10 s of one speaker")
        p.add_argument("--text", help="transcript of the clip (recommended by StepFun)")

    p = vsub.add_parser("preview", help="hear a voice made from a clip, without creating it (billed as TTS)")
    clip_options(p)
    p.add_argument("--sample-text", help="what the preview says (≤ ~50 characters; default: a short sentence "
                                         "in the clip's language)")
    p.add_argument("--language", choices=sorted(DEFAULT_SAMPLE_TEXTS),
                   help="language of the default --sample-text (default: guessed from --text, else en)")
    p.add_argument("--instruction", help="how to speak, e.g. 语气温柔，语速偏慢 (≤ 200 characters)")
    p.add_argument("--out", default="voice-preview.wav", help="where to write the preview WAV "
                                                              "(default voice-preview.wav)")
    common(p)

    p = vsub.add_parser("clone", help="create a voice from a clip (billed); prints its voice-tone-… id")
    clip_options(p)
    common(p)

    p = vsub.add_parser("list", help="list cloned voices: id, file id, creation time")
    p.add_argument("--limit", type=int, default=20, help="1–100 (default 20)")
    p.add_argument("--after", help="list the voices after this voice id (paging)")
    common(p)
    return voices
