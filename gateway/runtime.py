"""The event loop `serve` runs on: uvloop when it is installed, asyncio's own otherwise.

uvloop's transports cut the per-request cost of socket reads and writes (the
largest single item in a profile of a pass-through retrieve) and read large
uploads into a reused buffer instead of a fresh 256 KiB allocation per recv.
"""

from __future__ import annotations

import asyncio


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
