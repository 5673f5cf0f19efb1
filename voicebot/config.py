"""config.yaml + environment → typed, validated settings. Errors name the file and the field."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import SplitResult, urlsplit

import yaml

DEFAULT_STEPFUN_BASE_URL = "https://api.stepfun.com/step_plan/v1"
DEFAULT_TWILIO_API_BASE_URL = "https://api.twilio.com"


class ConfigError(Exception):
    """A configuration or dialplan file is wrong; the message names the file, the field and what was expected."""

    def __init__(self, source: str | Path, field_path: str, problem: str) -> None:
        self.source = str(source)
        self.field_path = field_path
        self.problem = problem
        where = f"{self.source}: {field_path}" if field_path else self.source
        super().__init__(f"{where}: {problem}")


class Fields:
    """Reads typed fields out of one YAML mapping, reporting errors with the full dotted path."""

    def __init__(self, source: str | Path, data: Any, prefix: str = "") -> None:
        self.source = source
        self.prefix = prefix
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(source, prefix or "(top level)", f"expected a mapping, got {type(data).__name__}")
        self.data = data
        self._used: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.path(key), problem)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, minimum: float | None = None,
            maximum: float | None = None, choices: tuple | None = None) -> Any:
        self._used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise self.error(key, "is required but missing")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {_kind_name(kinds)}, got a boolean")
        if isinstance(value, float) and math.isnan(value):     # .nan would pass every minimum and maximum
            raise self.error(key, f"expected {_kind_name(kinds)}, got .nan")
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {_kind_name(kinds)}, got {type(value).__name__} {value!r}")
        if choices is not None and value not in choices:
            raise self.error(key, f"expected one of {', '.join(map(str, choices))}, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be ≥ {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be ≤ {maximum}, got {value}")
        return value

    def section(self, key: str) -> "Fields":
        self._used.add(key)
        return Fields(self.source, self.data.get(key), self.path(key))

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.data) - self._used, key=str)
        if unknown:
            raise self.error(str(unknown[0]), f"unknown field (known here: {', '.join(sorted(self._used))})")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true/false", list: "a list", dict: "a mapping"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, f"line {line}", f"not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset "
                                                f"{exc.start}); save the file as UTF-8") from None
    return parse_yaml(text, path)


def parse_yaml(text: str, source: str | Path) -> Any:
    """YAML text (a file's, or one sent to the admin API) → its data; a ConfigError naming ``source`` and the
    position when it is not YAML -- whatever PyYAML raised."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(position unknown)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, where, f"invalid YAML: {problem}") from None
    except Exception as exc:   # PyYAML's value constructors raise their own errors: 2026-13-45, !!int x, !!bool x
        raise ConfigError(source, "(position unknown)", f"invalid YAML value ({type(exc).__name__}: {exc}); quote "
                                                        "a value YAML would read as a date, number or tag") from None


@dataclass(frozen=True)
class PlayoutSettings:
    lead_ms: int = 100          # how far ahead of real time audio is sent to the carrier
    mark_every_ms: int = 100    # spacing of playback marks; bounds how stale "heard" can be
    chunk_ms: int = 100         # most bot audio per carrier message, where the carrier takes any length


@dataclass(frozen=True)
class TwilioSettings:
    validate_signatures: bool = True
    stream_token_ttl_s: float = 60.0
    auth_token: str | None = field(default=None, repr=False)
    account_sid: str | None = None              # $TWILIO_ACCOUNT_SID: with the auth token, the REST API's login
    api_base_url: str = DEFAULT_TWILIO_API_BASE_URL   # REST calls (hang-up, transfer) go here


@dataclass(frozen=True)
class StepFunEndpoint:
    """Which StepFun server calls use and why, as `check` prints it and `serve` logs it."""
    kind: str            # embedded_emulator, configured_url or official_api
    url: str | None      # None: the embedded emulator, on a loopback port chosen when it starts
    reason: str

    _NAMES = {"embedded_emulator": "embedded emulator", "configured_url": "configured URL",
              "official_api": "official API"}

    def __str__(self) -> str:
        where = f" {self.url}" if self.url else ""
        return f"{self._NAMES[self.kind]}{where} ({self.reason})"


@dataclass(frozen=True)
class StepFunSettings:
    base_url: str = DEFAULT_STEPFUN_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 5.0
    # With a fallback (engine: auto) a slow realtime connect costs the caller silence: give up sooner.
    failover_connect_timeout_s: float = 1.5
    base_url_from: str = "the default"   # where base_url was set: STEPFUN_BASE_URL or "<file>: stepfun.base_url"
    strict_models: bool = False          # a model name StepFun does not document stops check and serve (else: warned)
    embedded: bool = False               # base_url is the embedded emulator serve started (no key, official URL)

    @property
    def ws_base_url(self) -> str:
        scheme, rest = self.base_url.split("://", 1)
        return {"https": "wss", "http": "ws"}.get(scheme, scheme) + "://" + rest

    @property
    def emulated(self) -> bool:
        """The embedded emulator stands in for StepFun: no key, and no server of our own named. A base URL other
        than the official one means "use that server" (a `voicebot emulator` needs no key)."""
        return self.embedded or (not self.api_key and self.base_url == DEFAULT_STEPFUN_BASE_URL)

    def endpoint(self) -> StepFunEndpoint:
        if self.emulated:
            return StepFunEndpoint("embedded_emulator", self.base_url if self.embedded else None,
                                   "no STEP_API_KEY and the official base URL: set STEP_API_KEY for StepFun, or "
                                   "STEPFUN_BASE_URL (or stepfun.base_url) for another server such as a "
                                   "`voicebot emulator`")
        if self.base_url != DEFAULT_STEPFUN_BASE_URL:
            key = ("with STEP_API_KEY" if self.api_key else
                   "no STEP_API_KEY: right for a `voicebot emulator`, a real StepFun server refuses the calls")
            return StepFunEndpoint("configured_url", self.base_url, f"from {self.base_url_from}; {key}")
        return StepFunEndpoint("official_api", self.base_url, "STEP_API_KEY set")


@dataclass(frozen=True)
class Settings:
    source: str
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1          # server processes sharing the port (SO_REUSEPORT)
    public_url: str = "http://127.0.0.1:8080"
    dialplans_dir: Path = Path("dialplans")
    transcripts_dir: Path = Path("transcripts")
    recordings_dir: Path = Path("recordings")
    database_url: str = "sqlite:///voicebot.db"   # SQLAlchemy form; a SQLite path is absolute once loaded
    database_spool: Path | None = None            # records the database refused at shutdown; None: beside it
    log_format: str = "auto"
    log_level: str = "info"
    stepfun: StepFunSettings = StepFunSettings()
    twilio: TwilioSettings = TwilioSettings()
    playout: PlayoutSettings = PlayoutSettings()
    max_message_bytes: int = 64 * 1024
    drain_seconds: float = 30.0   # after SIGTERM, how long calls in progress may go on before their goodbye
    max_calls: int = 400          # calls this process takes at once (0: no limit); more are refused
    carriers: dict = field(default_factory=dict)   # raw `carriers:` sections, read by each carrier module

    def carrier_fields(self, name: str) -> Fields:
        """The ``carriers.<name>`` section, for the carrier module to read with typed, located errors."""
        return Fields(self.source, self.carriers.get(name), f"carriers.{name}")

    @property
    def public_ws_url(self) -> str:
        scheme, rest = self.public_url.rstrip("/").split("://", 1)
        return {"https": "wss", "http": "ws"}[scheme] + "://" + rest


def url_parts(value: str) -> SplitResult | None:
    """``value`` split as a URL; None when it cannot be: an unclosed IPv6 "[" (``http://[::1``), a port that is
    not a number up to 65535 (``:99999``), which urllib only notices when it is used -- at the first request."""
    try:
        parts = urlsplit(value)
        parts.port      # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        return None
    return parts


def absolute_url(value: str, schemes: tuple[str, ...] = ("http", "https")) -> bool:
    """``value`` is a URL with one of ``schemes``, a host, and a valid port if any. Every URL a file or the
    environment gives is checked with it."""
    parts = url_parts(value)
    return parts is not None and parts.scheme in schemes and bool(parts.hostname)


def url_problem(value: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """What the error about a URL that is not ``absolute_url`` says."""
    return f"expected an absolute {'/'.join(schemes)} URL (a host, a port up to 65535 if any), got {value!r}"


def _url(fields: Fields, key: str, default: str, schemes: tuple[str, ...]) -> str:
    value = fields.get(key, str, default).rstrip("/")
    if not absolute_url(value, schemes):
        raise fields.error(key, url_problem(value, schemes))
    return value


# The carriers with a ``carriers.<name>`` section, one module each in voicebot/telephony (Twilio's settings are
# the top-level ``twilio:`` section).
CARRIER_SECTIONS = ("telnyx", "signalwire", "plivo", "exotel", "vonage", "jambonz", "asterisk", "audiosocket",
                    "freeswitch", "browser")

DATABASE_SCHEMES = ("sqlite", "sqlite+aiosqlite", "postgresql", "postgresql+asyncpg")
DATABASE_URL_ENV = "VOICEBOT_DATABASE_URL"     # overrides database.url: where a password belongs
STEPFUN_BASE_URL_ENV = "STEPFUN_BASE_URL"
# Environment variables that override a file key. The file is still read and checked in full: an override
# replaces a value, it never makes a valid file invalid (nor hides a broken line in it).
ENV_OVERRIDES = {STEPFUN_BASE_URL_ENV: "stepfun.base_url", DATABASE_URL_ENV: "database.url"}


def _database_url(value: str, base_dir: Path, error: Callable[[str], ConfigError]) -> str:
    """A SQLite file (a relative path is taken from the config file's folder) or a PostgreSQL database. Errors
    never repeat a PostgreSQL URL: it may hold a password."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in DATABASE_SCHEMES:
        raise error("expected sqlite:///<file> or postgresql://user:password@host:port/database, "
                    f"got a {scheme + '://' if sep else 'value without a scheme'} URL")
    if scheme.startswith("postgresql"):
        parts = url_parts(value)
        if parts is None or not parts.hostname or not parts.path.strip("/"):
            raise error("a PostgreSQL URL needs a host, a port up to 65535 if any, and a database: "
                        "postgresql://user:password@host:port/database")
        return value
    path, _, query = rest.partition("?")
    if not path.startswith("/") or path in ("/", "/:memory:"):
        raise error(f"expected sqlite:///<file> (three slashes, then a file path), got {value!r}")
    file = Path(path[1:])
    if not file.is_absolute():
        file = (base_dir / file).absolute()
    return f"{scheme}:///{file}" + (f"?{query}" if query else "")


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read config.yaml (``VOICEBOT_CONFIG`` or ./config.yaml; a missing default file means all defaults)."""
    env = os.environ if environ is None else environ
    explicit = path is not None or "VOICEBOT_CONFIG" in env
    config_path = Path(path if path is not None else env.get("VOICEBOT_CONFIG", "config.yaml"))
    if config_path.exists() or explicit:
        data = load_yaml(config_path)
    else:
        data = {}
    top = Fields(config_path, data)
    base_dir = config_path.parent

    server = top.section("server")
    host = server.get("host", str, "0.0.0.0")
    port = server.get("port", int, 8080, minimum=0, maximum=65535)
    public_url = _url(server, "public_url", f"http://127.0.0.1:{port}", ("http", "https"))
    max_message_bytes = server.get("max_message_bytes", int, 64 * 1024, minimum=1024)
    workers = server.get("workers", int, 1, minimum=1, maximum=256)
    drain_seconds = server.get("drain_seconds", float, 30.0, minimum=0.0, maximum=24 * 3600.0)
    max_calls = server.get("max_calls", int, 400, minimum=0)
    server.reject_unknown()

    step = top.section("stepfun")
    base_url = _url(step, "base_url", DEFAULT_STEPFUN_BASE_URL, ("http", "https"))
    base_url_from = f"{config_path}: stepfun.base_url" if step.data.get("base_url") is not None else "the default"
    if env.get(STEPFUN_BASE_URL_ENV):
        base_url_from = STEPFUN_BASE_URL_ENV
        base_url = env[STEPFUN_BASE_URL_ENV].strip().rstrip("/")
        if not absolute_url(base_url):
            raise ConfigError("environment", STEPFUN_BASE_URL_ENV, url_problem(base_url))
    stepfun = StepFunSettings(
        base_url=base_url.rstrip("/"),
        api_key=env.get("STEP_API_KEY") or None,
        connect_timeout_s=step.get("connect_timeout_s", float, 5.0, minimum=0.1),
        failover_connect_timeout_s=step.get("failover_connect_timeout_s", float, 1.5, minimum=0.1),
        base_url_from=base_url_from,
        strict_models=step.get("strict_models", bool, False),
    )
    step.reject_unknown()

    tw = top.section("twilio")
    twilio = TwilioSettings(
        validate_signatures=tw.get("validate_signatures", bool, True),
        stream_token_ttl_s=tw.get("stream_token_ttl_s", float, 60.0, minimum=1.0),
        auth_token=env.get("TWILIO_AUTH_TOKEN") or None,
        account_sid=env.get("TWILIO_ACCOUNT_SID") or None,
        api_base_url=_url(tw, "api_base_url", DEFAULT_TWILIO_API_BASE_URL, ("http", "https")),
    )
    tw.reject_unknown()

    po = top.section("playout")
    playout = PlayoutSettings(
        lead_ms=po.get("lead_ms", int, 100, minimum=20, maximum=2000),
        mark_every_ms=po.get("mark_every_ms", int, 100, minimum=20, maximum=2000),
        chunk_ms=po.get("chunk_ms", int, 100, minimum=20, maximum=1000),
    )
    if playout.lead_ms % 20 or playout.mark_every_ms % 20 or playout.chunk_ms % 20:
        raise ConfigError(config_path, "playout",
                          "lead_ms, mark_every_ms and chunk_ms must be multiples of 20 (one frame)")
    po.reject_unknown()

    logging_ = top.section("logging")
    log_format = logging_.get("format", str, "auto", choices=("auto", "json", "console"))
    log_level = logging_.get("level", str, "info", choices=("debug", "info", "warning", "error"))
    logging_.reject_unknown()

    database = top.section("database")
    database_url = _database_url(database.get("url", str, "sqlite:///voicebot.db"), base_dir,
                                 lambda problem: database.error("url", problem))
    if env.get(DATABASE_URL_ENV):
        database_url = _database_url(env[DATABASE_URL_ENV], base_dir,
                                     lambda problem: ConfigError("environment", DATABASE_URL_ENV, problem))
    spool = database.get("spool", str, None)
    database.reject_unknown()

    carriers = top.section("carriers")
    for name in carriers.data:
        if name not in CARRIER_SECTIONS:
            twilio = "; Twilio's settings are the top-level twilio: section" if name == "twilio" else ""
            raise carriers.error(str(name), f"unknown carrier (known: {', '.join(CARRIER_SECTIONS)}){twilio}")
    settings = Settings(
        carriers=dict(carriers.data),
        source=str(config_path),
        host=host,
        port=port,
        workers=workers,
        public_url=public_url,
        dialplans_dir=base_dir / top.get("dialplans", str, "dialplans"),
        transcripts_dir=base_dir / top.get("transcripts_dir", str, "transcripts"),
        recordings_dir=base_dir / top.get("recordings_dir", str, "recordings"),
        database_url=database_url,
        database_spool=None if spool is None else base_dir / spool,
        log_format=log_format,
        log_level=log_level,
        stepfun=stepfun,
        twilio=twilio,
        playout=playout,
        max_message_bytes=max_message_bytes,
        drain_seconds=drain_seconds,
        max_calls=max_calls,
    )
    top.reject_unknown()
    return settings


def check_serving(settings: Settings) -> None:
    """What ``voicebot serve`` needs beyond valid files. With a real StepFun key this is a production
    server, and refusing every Twilio call for want of a token would be worse than not starting."""
    if settings.workers > 1 and settings.port == 0:
        raise ConfigError(settings.source, "server.port",
                          "must be a fixed port when several workers share it (workers > 1), not 0")
    if settings.twilio.validate_signatures and not settings.twilio.auth_token and settings.stepfun.api_key:
        raise ConfigError("environment", "TWILIO_AUTH_TOKEN",
                          "is required while twilio.validate_signatures is on (set it, or turn the check off "
                          "for local testing)")
