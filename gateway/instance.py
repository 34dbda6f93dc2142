"""Who this gateway process is, and whether another one is provably gone.

A pending create belongs to the process running it: only when that process is
gone may another settle the create (attach it, or mark it failed). "Gone" must
never be a guess about a live process, whatever a create's duration:

- on the same host and in the same pid namespace (one boot id, one namespace),
  a process is gone when its pid no longer runs the same process (the start
  time in /proc/<pid>/stat differs), or, for an instance of this very process,
  when it was stopped (tests and reloads run several in one process);
- on a host of the same name that rebooted since its last heartbeat, it is gone;
- on another host, when its heartbeat is older than the timeout (a process that
  stops heartbeating for that long is treated as dead: the one residual case,
  bounded by the orphan sweep).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.store.base import Store

log = logging.getLogger("gateway.instance")

HOST = socket.gethostname()

# Instances running in this process now (several apps may share one process).
_LIVE: set[str] = set()


@dataclass(frozen=True, slots=True)
class Instance:
    id: str
    host: str
    boot_id: str
    pid: int
    # The process's start time in clock ticks since boot ("" where unknown).
    started: str
    heartbeat_at: float = 0.0


def _boot_id() -> str:
    """This kernel's boot and this pid namespace: pids compare only where both agree."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _boot_time() -> float:
    try:
        return time.time() - float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


BOOT_ID = _boot_id()
BOOT_TIME = _boot_time()


def process_started(pid: int) -> str | None:
    """The start time of `pid` ("" where /proc is unavailable), or None if it runs no more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return _signal_probe(pid)
    # The command name may hold spaces and parentheses: fields resume after the last ')'.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def _signal_probe(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def start() -> Instance:
    """A new instance of this process, live until `stop`."""
    pid = os.getpid()
    instance = Instance(
        id=f"{HOST}:{pid}:{secrets.token_hex(4)}",
        host=HOST,
        boot_id=BOOT_ID,
        pid=pid,
        started=process_started(pid) or "",
    )
    _LIVE.add(instance.id)
    return instance


def stop(instance_id: str) -> None:
    _LIVE.discard(instance_id)


def is_gone(other: Instance, now: float, timeout: float) -> bool:
    """Whether `other` can no longer be running anything (see the module docstring)."""
    if other.id in _LIVE:
        return False
    if other.host == HOST and other.heartbeat_at < BOOT_TIME:
        return True  # its host rebooted since it last said anything
    if other.host != HOST or other.boot_id != BOOT_ID or not BOOT_ID:
        return other.heartbeat_at < now - timeout
    if other.pid == os.getpid():
        return True  # this process, but not one of its live instances
    started = process_started(other.pid)
    return started is None or (bool(started) and bool(other.started) and started != other.started)


async def reap(store: Store, now: float, timeout: float) -> list[str]:
    """Forget every instance that is gone: its leases free at once, its creates settle."""
    gone = [other.id for other in await store.instances() if is_gone(other, now, timeout)]
    for instance_id in gone:
        await store.forget_instance(instance_id)
        log.warning(
            "instance %s is gone; its leases and pending creates are taken over", instance_id
        )
    return gone


async def keep_alive(store: Store, instance: Instance, interval: float, timeout: float) -> None:
    """Heartbeat, and reap the instances that are gone, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            if not await store.heartbeat(instance.id, time.time()):
                # Another process took this one for dead (a long pause): say it lives.
                await store.register_instance(replace(instance, heartbeat_at=time.time()))
            await reap(store, time.time(), timeout)
        except Exception as exc:  # a store hiccup must not end the heartbeat
            log.error("heartbeat failed: %s", type(exc).__name__)
