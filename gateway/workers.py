"""`serve --workers N`: N gateway processes on one port (SO_REUSEPORT).

The supervisor starts each worker as `serve --worker-index i --reuse-port`,
forwards signals (SIGHUP reloads every worker), restarts a worker that dies and
keeps prometheus-client's multiprocess directory so `/metrics` on any worker
reports the sum over all of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType

log = logging.getLogger("gateway.workers")


def _start(index: int, argv: list[str]) -> subprocess.Popen[bytes]:
    args = [a for a in argv if not a.startswith("--workers")]
    if "--workers" in argv:  # "--workers N" as two words
        i = argv.index("--workers")
        args = argv[:i] + argv[i + 2 :]
    command = [sys.executable, "-m", "gateway", *args, "--worker-index", str(index), "--reuse-port"]
    return subprocess.Popen(command)


def supervise(count: int, argv: list[str]) -> int:
    directory = tempfile.mkdtemp(prefix="batch-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import multiprocess

    workers = {i: _start(i, argv) for i in range(count)}
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for proc in workers.values():
            proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    log.info("started %d workers", count)
    try:
        while not stopping:
            time.sleep(0.5)
            for index, proc in list(workers.items()):
                if proc.poll() is not None and not stopping:
                    multiprocess.mark_process_dead(proc.pid)
                    log.warning("worker %d exited with %s; restarting", index, proc.returncode)
                    workers[index] = _start(index, argv)
        for proc in workers.values():
            proc.wait(timeout=30)
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(directory, ignore_errors=True)
    return 0
