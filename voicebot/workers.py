"""``voicebot serve --workers N``: N server processes on one port, kept running.

Each worker is a whole server (its own event loop, calls, StepFun connections) listening on the same
port with ``SO_REUSEPORT``: the kernel spreads new connections over them, so a machine with N cores
holds about N times the calls of one process. Calls never move between workers; what a call needs
from another connection is the stream token that the voice webhook (served by any worker) hands out,
and the token key is shared (:func:`voicebot.telephony.twilio_auth.stream_token_secret`, made before
the workers fork).

Metrics: every worker writes its values into one directory that the supervisor makes for the server's
lifetime (prometheus-client's multiprocess mode, :func:`shared_metrics_dir`), so a scrape of ``/metrics``
answered by any worker sees them all; a worker that dies is marked dead there, so its calls stop counting
as active while its counters stay in the totals.

The supervisor restarts a worker that dies and stops everything on SIGINT/SIGTERM: each worker then
ends its calls cleanly (as a single server does) and is killed only if it has not exited within
``STOP_GRACE_S``. A worker that dies within ``FAST_FAILURE_S`` of its start twice in a row (a bad port,
a broken install) stops the server instead of restarting forever.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait

import structlog

log = structlog.get_logger("voicebot.workers")

STOP_GRACE_S = 15.0
FAST_FAILURE_S = 5.0
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"   # read by prometheus-client when it is imported


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[str]:
    """A new directory for the workers' metrics, set as ``PROMETHEUS_MULTIPROC_DIR`` while the server runs and
    removed after. Enter it before anything imports voicebot.metrics: prometheus-client chooses where values
    live when a metric is created."""
    if "voicebot.metrics" in sys.modules:
        raise RuntimeError("voicebot.metrics was imported before the workers' metrics directory was set up")
    inherited = os.environ.get(MULTIPROC_DIR_ENV)
    path = tempfile.mkdtemp(prefix="voicebot-metrics-")
    os.environ[MULTIPROC_DIR_ENV] = path
    if "prometheus_client" in sys.modules:      # imported without the directory: choose again
        from prometheus_client import values
        values.ValueClass = values.get_value_class()
    log.info("metrics_multiprocess_dir", path=path)
    try:
        yield path
    finally:
        if inherited is None:
            os.environ.pop(MULTIPROC_DIR_ENV, None)
        else:
            os.environ[MULTIPROC_DIR_ENV] = inherited
        shutil.rmtree(path, ignore_errors=True)


def forget_worker_metrics(pid: int) -> None:
    """A worker is gone: its live gauges (active calls) no longer count; its counters stay in the totals."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)


class Supervisor:
    def __init__(self, count: int, serve: Callable[[int], None]) -> None:
        self.count = count
        self.serve = serve                 # runs worker i until it is told to stop
        self._context = multiprocessing.get_context("fork")   # workers inherit settings, dialplan, token key
        self._workers: dict[int, multiprocessing.Process] = {}
        self._started: dict[int, float] = {}
        self._fast_failures: dict[int, int] = {}
        self._stopping = False

    def run(self) -> int:
        """Start the workers and keep them running until a signal; the exit status of the server."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        status = 0
        try:
            for index in range(self.count):
                self._start(index)
            log.info("workers_started", workers=self.count, pids=[p.pid for p in self._workers.values()])
            while not self._stopping:
                ended = wait([p.sentinel for p in self._workers.values()], timeout=1.0)
                for index, process in list(self._workers.items()):
                    if process.sentinel in ended and not self._stopping:
                        if not self._restart(index, process):
                            status = 1
                            self._stopping = True
                            break
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def _on_signal(self, signum, _frame) -> None:
        if not self._stopping:
            log.info("workers_stopping", signal=signal.Signals(signum).name)
        self._stopping = True

    def _start(self, index: int) -> None:
        process = self._context.Process(target=self._worker_main, args=(index,), name=f"voicebot-worker-{index}")
        process.start()
        self._workers[index] = process
        self._started[index] = time.monotonic()

    def _worker_main(self, index: int) -> None:
        # The supervisor's handlers are not the worker's: its server installs its own on its event loop.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        structlog.contextvars.bind_contextvars(worker=index)
        self.serve(index)

    def _restart(self, index: int, process: multiprocessing.Process) -> bool:
        process.join()
        forget_worker_metrics(process.pid)
        lived_s = time.monotonic() - self._started[index]
        log.error("worker_exited", worker=index, pid=process.pid, exitcode=process.exitcode, lived_s=round(lived_s, 1))
        if lived_s < FAST_FAILURE_S:
            self._fast_failures[index] = self._fast_failures.get(index, 0) + 1
            if self._fast_failures[index] >= 2:
                log.error("worker_keeps_failing", worker=index,
                          message=f"worker {index} died twice within {FAST_FAILURE_S:g} s of starting: "
                                  "stopping the server (see the worker's error above)")
                return False
        else:
            self._fast_failures[index] = 0
        self._start(index)
        log.info("worker_restarted", worker=index, pid=self._workers[index].pid)
        return True

    def _stop_all(self) -> None:
        alive = [p for p in self._workers.values() if p.is_alive()]
        for process in alive:
            os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker_killed", pid=process.pid, after_s=STOP_GRACE_S)
                process.kill()
                process.join()
        log.info("workers_stopped", workers=len(self._workers))
