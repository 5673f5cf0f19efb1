"""A throwaway PostgreSQL server for tests: its own data folder in /tmp, a free loopback port, its unix socket
in that folder, run as an unprivileged user (PostgreSQL refuses to run as root). Needs the server binaries
(Debian: ``apt-get install postgresql``); as root it runs them as the ``postgres`` user that package creates,
or creates a system user for them."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# Stops the server and removes its folder once its stdin closes: when the tests end, or when the test process
# dies without tearing down (killed, timed out). Its own session, so that a signal to the tests' process group
# does not take it along.
WATCHDOG = """
import shutil, subprocess, sys
data, folder, *pg_ctl = sys.argv[1:]
sys.stdin.buffer.read()
subprocess.run([*pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
shutil.rmtree(folder, ignore_errors=True)
"""
SERVER_USER = "voicebot-pg"     # created (as root) only when there is no "postgres" user
SUPERUSER = "voicebot"


def find_bin_dir() -> Path:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH nor in "
                       "/usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql)")


def unprivileged_user() -> str | None:
    """Who runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", SERVER_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                   check=True, capture_output=True)
    return SERVER_USER


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        self.bin = find_bin_dir()
        self.user = unprivileged_user()
        self.password = secrets.token_hex(12)
        self.folder: Path | None = None
        self.port: int | None = None
        self._watchdog: subprocess.Popen | None = None

    def _command(self, program: str) -> list[str]:
        command = [str(self.bin / program)]
        return command if self.user is None else ["runuser", "-u", self.user, "--", *command]

    def _run(self, program: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self._command(program), *argv], capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        """Start the server (stopped by ``stop()``, or by its watchdog if this process dies first)."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="voicebot-pg-"))
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(self.folder / "data"), str(self.folder), *self._command("pg_ctl")],
            stdin=subprocess.PIPE, start_new_session=True)
        (self.folder / "pwfile").write_text(self.password + "\n")
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.folder, self.folder / "pwfile"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        data = self.folder / "data"
        done = self._run("initdb", "-D", str(data), "-U", SUPERUSER, f"--pwfile={self.folder / 'pwfile'}",
                         "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
                         "--locale=C.UTF-8")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        for _attempt in range(3):      # a port chosen free can be taken before the server binds it
            self.port = free_port()
            options = (f"-p {self.port} -h 127.0.0.1 -k {self.folder} -c fsync=off -c synchronous_commit=off "
                       "-c full_page_writes=off")
            done = self._run("pg_ctl", "-D", str(data), "-l", str(self.folder / "server.log"), "-w", "-t", "30",
                             "-o", options, "start")
            if done.returncode == 0:
                return
        log = (self.folder / "server.log").read_text(errors="replace") if (self.folder / "server.log").exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}\n{log[-2000:]}")

    def stop(self) -> None:
        """Stop the server and remove its folder (the watchdog does both as soon as its stdin closes)."""
        if self._watchdog is not None:
            self._watchdog.stdin.close()
            self._watchdog.wait(60)
            self._watchdog = None

    def url(self, database: str, *, password: str | None = None) -> str:
        return (f"postgresql://{SUPERUSER}:{self.password if password is None else password}"
                f"@127.0.0.1:{self.port}/{database}")

    async def create_database(self, name: str) -> str:
        """A fresh database; its URL."""
        import asyncpg

        conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, password=self.password,
                                     database="postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)
