"""Offline StepFun-compatible API emulator (``voicebot emulator``; the offline default of ``voicebot serve``).

See :mod:`voicebot.emulator.app` for the application and fault injection, and
:mod:`voicebot.emulator.realtime` for the realtime protocol and the conventions a client can rely on.
"""

from .app import (EMULATOR, PREFIXES, ROUTE_MODULES, Emulator, Faults, check_bearer, create_app, error_response,
                  main_argv, run_emulator, start_emulator)

__all__ = [
    "EMULATOR", "PREFIXES", "ROUTE_MODULES", "Emulator", "Faults", "check_bearer", "create_app", "error_response",
    "main_argv", "run_emulator", "start_emulator",
]
