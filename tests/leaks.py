"""Proving that a call left nothing behind: asyncio tasks, file descriptors and sockets of the test process
(server, emulator and simulated caller all run in it) before and after, with :mod:`voicebot.resources`.

Not leaks, and taken out before comparing: the idle keep-alive connections of the server's HTTP client
session (aiohttp keeps up to 100 of them for 15 s, for the chain engine's next request) — they are closed
here, both of their ends with them — and what finishing the call still has in hand: the emulator's closing
handshakes, the record writer's last write. So :func:`settled` waits (up to ``timeout``) for the process to come
back to the baseline, and only then fails, naming each task and descriptor left over.
"""

from __future__ import annotations

import asyncio

from voicebot import resources

from conftest import until


def close_idle_connections(stack) -> None:
    """Close the keep-alive connections the server's HTTP client session holds unused (aiohttp has no public
    call for it: its connector keeps them in ``_conns`` until they expire)."""
    from voicebot.server import SERVICES

    http = stack.app[SERVICES].http
    connector = getattr(http, "connector", None)
    idle = getattr(connector, "_conns", None)
    if not idle:
        return
    for connections in list(idle.values()):
        for protocol, _ in connections:
            protocol.close()
    idle.clear()


async def quiet(stack, timeout: float = 10.0) -> resources.Snapshot:
    """Every call finished, every emulator session closed, idle connections closed: the process at rest."""
    await stack.idle(timeout)
    await until(lambda: all(s.closed for s in stack.emulator.sessions), timeout=timeout,
                what="every realtime session to close")
    close_idle_connections(stack)
    await asyncio.sleep(0.1)      # the closes reach the other ends
    return resources.snapshot(exclude=asyncio.current_task())


async def settled(stack, baseline: resources.Snapshot, timeout: float = 10.0) -> resources.Snapshot:
    """Wait until the process holds nothing beyond ``baseline``; fail naming what it still holds."""
    await stack.idle(timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        close_idle_connections(stack)
        now = resources.snapshot(exclude=asyncio.current_task())
        growth = now.growth_since(baseline)
        if not growth["tasks"] and not growth["fds"]:
            return now
        if loop.time() > deadline:
            raise AssertionError("left behind after the call:\n  " + "\n  ".join(growth["tasks"] + growth["fds"]))
        await asyncio.sleep(0.05)
