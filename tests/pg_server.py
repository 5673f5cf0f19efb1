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
import tempfile
from pathlib import Path

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
        self.running = False

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="voicebot-pg-"))
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
                self.running = True
                return
        log = (self.folder / "server.log").read_text(errors="replace") if (self.folder / "server.log").exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}\n{log[-2000:]}")

    def stop(self) -> None:
        try:
            if self.running:
                self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
                self.running = False
        finally:
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)

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
