"""``voicebot serve · check · emulator · demo · simulate · voices · calls · campaign · dnc``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys

import structlog

from .config import ConfigError, Settings, load_settings
from .dialplan import Dialplan, load_dialplan
from .logs import configure_logging
from .stepfun.models import STRICT_MODELS_HINT, log_unknown_models

log = structlog.get_logger("voicebot.cli")




def _load(args) -> tuple[Settings, Dialplan]:
    settings = load_settings(args.config)
    if getattr(args, "strict_models", False):
        settings = dataclasses.replace(settings, stepfun=dataclasses.replace(settings.stepfun, strict_models=True))
    return settings, load_dialplan(settings.dialplans_dir)


def _check_startup(settings: Settings, dialplan: Dialplan):
    """server.check_startup: imports the server, hence the metrics (with --workers N, only once their shared
    directory is set)."""
    from .server import check_startup
    return check_startup(settings, dialplan)


async def _serve(settings: Settings, dialplan: Dialplan,
                 stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Serve until a stop signal (SIGTERM, SIGINT; a worker only SIGTERM, from its supervisor) has drained the
    calls; SIGHUP reloads the dialplans."""
    from .server import run_until_stopped, start_server

    runners, settings, url = await start_server(settings, dialplan)
    log.info("voicebot_listening", url=url, public_url=settings.public_url,
             personas=[p.name for p in dialplan.personas],
             default_persona=dialplan.default.name if dialplan.default else None,
             twilio_signatures=settings.twilio.validate_signatures,
             twilio_auth_token_set=bool(settings.twilio.auth_token),
             drain_seconds=settings.drain_seconds, max_calls=settings.max_calls or None)
    await run_until_stopped(runners, stop_signals=stop_signals)


def cmd_serve(args) -> int:
    settings, dialplan = _load(args)
    if args.workers is not None:
        settings = dataclasses.replace(settings, workers=args.workers)
    configure_logging(settings.log_format, settings.log_level)
    if settings.workers == 1:
        log_unknown_models(_check_startup(settings, dialplan))
        from .server import install_event_loop
        log.info("event_loop", loop=install_event_loop())
        asyncio.run(_serve(settings, dialplan))
        return 0
    from .workers import Supervisor, shared_metrics_dir

    if settings.stepfun.emulated:
        log.warning("stepfun_emulator_per_worker", workers=settings.workers,
                    message="no STEP_API_KEY: each worker answers with its own embedded emulator")

    with shared_metrics_dir():
        log_unknown_models(_check_startup(settings, dialplan))   # before the workers fork: one check, one log
        from .server import install_event_loop, longest_stop_s   # imports the metrics: after their directory is set

        def serve(index: int) -> None:
            log.info("event_loop", loop=install_event_loop())
            asyncio.run(_serve(settings, dialplan, stop_signals=(signal.SIGTERM,)))

        return Supervisor(settings.workers, serve, stop_timeout_s=longest_stop_s(settings.drain_seconds)).run()


def cmd_check(args) -> int:
    settings, dialplan = _load(args)
    unknown_models = _check_startup(settings, dialplan)     # every check serve makes before it listens
    print(f"config {settings.source}: ok")
    for model in unknown_models:
        print(f"warning: {model}", file=sys.stderr)
    if unknown_models:
        print(f"  ({STRICT_MODELS_HINT})", file=sys.stderr)
    print(f"stepfun: {settings.stepfun.endpoint()}")
    for persona in dialplan.personas:
        numbers = ", ".join(persona.numbers) or "-"
        flag = " (default)" if persona.default else ""
        print(f"persona {persona.name}{flag}: {persona.language}, voice {persona.voice}, numbers {numbers}"
              f"  [{persona.source}]")
        for line in _tool_report(persona, settings):
            print(f"  {line}")
    from .telephony.rest import report as call_control_report
    print("\n".join(call_control_report(settings)))
    return _check_campaigns(settings, dialplan)


def _check_campaigns(settings: Settings, dialplan) -> int:
    """Every campaign definition in <dialplans>/campaigns/ checked as ``voicebot campaign create`` would."""
    from .campaigns.manage import Invalid, check_file
    from .telephony.rest import call_control_for

    failed = 0
    for path in sorted((settings.dialplans_dir / "campaigns").glob("*.yaml")):
        try:
            spec, listed = check_file(path, dialplan)
        except Invalid as exc:
            print(f"campaign {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        skipped = f", {len(listed.skipped)} rows skipped" if listed.skipped else ""
        print(f"campaign {spec.name}: persona {spec.persona}, {spec.carrier}, {len(listed.contacts)} contacts"
              f"{skipped}  [{path}]")
        for problem in listed.skipped:
            print(f"  row {problem.row} skipped: {problem.value!r}: {problem.problem}")
        client = call_control_for(spec.carrier, settings, None)
        if client.dial_problem is not None:
            print(f"  warning: cannot dial yet: {client.dial_problem}")
    return 2 if failed else 0


def _tool_report(persona, settings: Settings) -> list[str]:
    """The persona's tools, and on which carriers a tool is not offered (and why)."""
    from .control import carrier_abilities
    from .server import session_classes
    from .telephony.rest import capabilities_of
    from .tools import not_offered, secret_problems

    tools = persona.tools
    if not tools.names:
        return []
    lines = [f"tools: {', '.join(tools.names)}"]
    for carrier, session in session_classes().items():
        abilities = carrier_abilities(session, *capabilities_of(carrier, settings))
        for name, why in not_offered(tools, abilities).items():
            lines.append(f"not offered on {carrier}: {name} ({why})")
    problem = secret_problems(tools)
    if problem:
        lines.append(f"warning: {problem}")
    return lines


def cmd_emulator(args) -> int:
    from .emulator.app import Emulator, run_emulator
    configure_logging("auto", "info")
    emulator = Emulator(speed=args.speed, api_key=args.api_key, session_limit_s=args.session_limit_s,
                        record=args.record)
    run_emulator(args.host, args.port, emulator=emulator)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .demo_campaign import run_campaign_demo
    if args.web:
        from .demo_web import run_web_demo
        return asyncio.run(run_web_demo(config=args.config, port=args.port))
    inbound = 0 if args.campaign else asyncio.run(run_demo(config=args.config, wav_out=args.wav_out))
    outcome = max(inbound, asyncio.run(run_campaign_demo(config=args.config)))
    print("\nTalk to the personas yourself, from the browser (offline too): .venv/bin/voicebot demo --web")
    return outcome


def cmd_simulate(args) -> int:
    from .demo import run_simulate
    return asyncio.run(run_simulate(url=args.url, to=args.to, from_=args.from_, wav=args.wav,
                                    barge_wav=args.barge_wav, wav_out=args.wav_out,
                                    max_duration_s=args.max_duration, carrier=args.carrier,
                                    auth_token=os.environ.get("TWILIO_AUTH_TOKEN")))


def cmd_voices(args) -> int:
    from .voices_cli import run
    configure_logging("auto", "error")   # the command prints its own messages; the key is never among them
    return asyncio.run(run(args))


def cmd_calls(args) -> int:
    from .calls_cli import run
    configure_logging("auto", "error")   # the command prints its own messages
    return asyncio.run(run(args))


def cmd_campaigns(args) -> int:
    from .campaigns_cli import run
    configure_logging("auto", "error")   # the command prints its own messages
    return asyncio.run(run(args))


def cmd_loadtest(args) -> int:
    from .loadtest import run_cli
    return run_cli(args)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of processes, 1 or more, got {text!r}")
    return value


STRICT_MODELS_HELP = ("refuse a model name StepFun does not document (default: a warning; stepfun.strict_models "
                      "in the config)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description="Telephony voice-bot server for StepFun speech models")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the voice server (embedded StepFun emulator when STEP_API_KEY is unset)")
    p.add_argument("--config", help="config file (default: $VOICEBOT_CONFIG or ./config.yaml)")
    p.add_argument("--workers", type=_positive_int, help="server processes sharing the port, one per core to use "
                   "(default: server.workers in the config, 1)")
    p.add_argument("--strict-models", action="store_true", help=STRICT_MODELS_HELP)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate config.yaml and the dialplans as serve does, list personas")
    p.add_argument("--config")
    p.add_argument("--strict-models", action="store_true", help=STRICT_MODELS_HELP)
    p.set_defaults(func=cmd_check)

    from .emulator.app import build_arg_parser as emulator_options
    p = emulator_options(sub.add_parser("emulator", help="run the offline StepFun emulator"))
    p.set_defaults(func=cmd_emulator)

    p = sub.add_parser("demo", help="one simulated Twilio call, then a small outbound campaign, against an "
                       "in-process server and emulator")
    p.add_argument("--config")
    p.add_argument("--wav-out", default="demo-call.wav", help="stereo recording: caller left, bot right")
    p.add_argument("--campaign", action="store_true", help="only the outbound campaign")
    p.add_argument("--web", action="store_true", help="instead: serve offline (embedded emulator) and print a "
                   "sign-in link to the console, to talk to the personas from the browser")
    p.add_argument("--port", type=int, default=0, help="with --web: the loopback port (default: a free one)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="place one simulated Twilio call against a running server")
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--carrier", default="twilio", help="which carrier's protocol the caller speaks")
    p.add_argument("--to", required=True, help="called number (E.164)")
    p.add_argument("--from", dest="from_", default="+15005550006")
    p.add_argument("--wav", required=True, help="what the caller says after the greeting")
    p.add_argument("--barge-wav", help="said over the bot's reply, 800 ms into it (barge-in)")
    p.add_argument("--wav-out", default="simulated-call.wav")
    p.add_argument("--max-duration", type=float, default=40.0)
    p.set_defaults(func=cmd_simulate)

    from .loadtest import add_arguments as loadtest_options
    p = loadtest_options(sub.add_parser("loadtest", help="N simulated Twilio callers against a server process "
                                        "and an emulator process: CPU, memory, latency per N"))
    p.set_defaults(func=cmd_loadtest)

    from .voices_cli import add_parser as voices_parser
    voices_parser(sub).set_defaults(func=cmd_voices)

    from .calls_cli import add_parser as calls_parser
    calls_parser(sub).set_defaults(func=cmd_calls)

    from .campaigns_cli import add_parsers as campaign_parsers
    for p in campaign_parsers(sub):
        p.set_defaults(func=cmd_campaigns)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"voicebot: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
