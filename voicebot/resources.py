"""What this process holds right now: asyncio tasks, file descriptors, sockets, threads and resident memory; and
handing the heap memory it keeps free back to the system (:func:`trim_heap_every`, run by the server).

Read from the running event loop and from ``/proc/self`` (Linux; elsewhere the descriptor and socket parts are
empty). Used to prove that nothing leaks: the fault tests compare a snapshot before and after a faulted call,
the soak benchmark reads ``GET /debug/runtime`` (``VOICEBOT_DEBUG_RUNTIME=1``) every few seconds.

A task is described by its coroutine's qualified name (``Call._run``, ``ChainEngine._work``), a descriptor by
what it points at (a path, ``pipe``, ``anon_inode:[eventpoll]``) and a socket by its protocol, addresses and
TCP state, so that a difference between two snapshots says what was left behind, not only how much.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PROC_FD = Path("/proc/self/fd")
_TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
               7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


@dataclass
class Snapshot:
    tasks: Counter = field(default_factory=Counter)        # coroutine qualname -> live tasks running it
    fds: dict[int, str] = field(default_factory=dict)      # descriptor -> what it points at
    threads: int = 0
    rss_bytes: int = 0

    @property
    def sockets(self) -> dict[int, str]:
        return {fd: what for fd, what in self.fds.items() if what.startswith(("tcp", "udp", "unix", "socket"))}

    def summary(self) -> dict:
        """Counts only (what ``/debug/runtime`` serves), and the tasks by coroutine."""
        return {"tasks": sum(self.tasks.values()), "fds": len(self.fds), "sockets": len(self.sockets),
                "threads": self.threads, "rss_bytes": self.rss_bytes,
                "tasks_by_coroutine": dict(self.tasks.most_common())}

    def growth_since(self, before: "Snapshot") -> dict[str, list[str]]:
        """What this snapshot holds beyond ``before``: extra tasks (one line per task) and descriptors that
        point at something ``before`` had fewer of. Empty lists: nothing was left behind."""
        tasks = [f"task {name}" for name, count in (self.tasks - before.tasks).items() for _ in range(count)]
        had = Counter(_kind(what) for what in before.fds.values())
        now = Counter(_kind(what) for what in self.fds.values())
        extra_kinds = now - had
        fds = []
        for fd, what in sorted(self.fds.items()):
            kind = _kind(what)
            if extra_kinds.get(kind, 0) > 0 and before.fds.get(fd) != what:
                extra_kinds[kind] -= 1
                fds.append(f"fd {fd}: {what}")
        return {"tasks": tasks, "fds": fds}


def _kind(what: str) -> str:
    """What two descriptors share when one may stand for the other: a socket's protocol and local end's
    listening state, a file's path (ports of client sockets change from call to call)."""
    if what.startswith(("tcp", "udp")):
        return what.split(" ", 1)[0] + (" LISTEN" if what.endswith("LISTEN") else "")
    return what


def task_name(task: asyncio.Task) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or type(coro).__name__


def snapshot(loop: asyncio.AbstractEventLoop | None = None, *, exclude: asyncio.Task | None = None) -> Snapshot:
    """The tasks of ``loop`` (the running one by default; none when there is none), minus ``exclude``, and the
    process's descriptors, threads and RSS."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
    tasks: Counter = Counter()
    if loop is not None:
        tasks.update(task_name(t) for t in asyncio.all_tasks(loop) if t is not exclude and not t.done())
    return Snapshot(tasks=tasks, fds=open_fds(), threads=threading.active_count(), rss_bytes=rss_bytes())


TRIM_INTERVAL_ENV = "VOICEBOT_MALLOC_TRIM_S"
DEFAULT_TRIM_INTERVAL_S = 60.0


def trim_interval_s(environ: dict | None = None) -> tuple[float, str | None]:
    """How often the server hands freed heap memory back (``VOICEBOT_MALLOC_TRIM_S``, seconds; 0 = never), and
    the problem with the variable's value if it has one (the default is used then)."""
    raw = (os.environ if environ is None else environ).get(TRIM_INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_TRIM_INTERVAL_S, None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        return DEFAULT_TRIM_INTERVAL_S, f"{TRIM_INTERVAL_ENV}={raw!r} is not a number of seconds >= 0"
    return value, None


async def trim_heap_every(interval_s: float) -> None:
    """Runs until cancelled: every ``interval_s`` the C allocator gives back the memory it keeps free (returns at
    once where there is no ``malloc_trim``).

    Why: glibc keeps what a process frees for reuse, and with many calls' buffers of every size coming and going
    its heap fragments; the soak benchmark saw the server's RSS climb to 540 MB at 50 calls with about 200 MB in
    use (``malloc_trim`` then returned the rest), and stay at 190-270 MB with a trim every minute, each taking
    about 12 ms. In a thread: the event loop runs on meanwhile (only its own calls to malloc wait for the trim)."""
    trim = _malloc_trim()
    if trim is None:
        return
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim, 0)


def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library, or no ctypes)."""
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (ImportError, OSError, AttributeError):
        return None


def trim_heap() -> bool:
    """Have the C allocator give the memory it keeps free back to the system now (False where it cannot). What
    RSS drops by then was freed memory the allocator kept, not live data."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def rss_bytes(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def fd_count(pid: int | str = "self") -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def open_fds() -> dict[int, str]:
    """Every open descriptor of this process and what it points at; sockets resolved to their addresses."""
    targets: dict[int, str] = {}
    try:
        names = os.listdir(PROC_FD)
    except OSError:
        return targets
    for name in names:
        try:
            targets[int(name)] = os.readlink(PROC_FD / name)
        except (OSError, ValueError):
            continue      # the descriptor listdir itself used, closed by now
    inodes = {int(t[8:-1]) for t in targets.values() if t.startswith("socket:[")}
    described = _sockets(inodes) if inodes else {}
    for fd, target in targets.items():
        if target.startswith("socket:["):
            targets[fd] = described.get(int(target[8:-1]), "socket")
    return targets


def _sockets(inodes: set[int]) -> dict[int, str]:
    """inode -> "tcp 127.0.0.1:8080 -> 127.0.0.1:51234 ESTABLISHED" (or "unix <path>") for ``inodes``."""
    found: dict[int, str] = {}
    for proto, path in (("tcp", "/proc/self/net/tcp"), ("tcp6", "/proc/self/net/tcp6"),
                        ("udp", "/proc/self/net/udp"), ("udp6", "/proc/self/net/udp6")):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            inode = int(parts[9])
            if inode in inodes:
                state = _TCP_STATES.get(int(parts[3], 16), parts[3]) if proto.startswith("tcp") else ""
                found[inode] = f"{proto} {_address(parts[1])} -> {_address(parts[2])} {state}".rstrip()
    try:
        lines = Path("/proc/self/net/unix").read_text().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 7 and int(parts[6]) in inodes:
            found[int(parts[6])] = "unix" + (f" {parts[7]}" if len(parts) > 7 else "")
    return found


def _address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(host, 16)))
    else:   # four little-endian 32-bit words
        ip = socket.inet_ntop(socket.AF_INET6, b"".join(struct.pack("<I", int(host[i:i + 8], 16))
                                                        for i in range(0, 32, 8)))
    return f"{ip}:{int(port, 16)}"
