"""Times one poller sweep inside a gateway process built from a config (bench item 7).

The hook expected from the gateway: `gateway.poller.Poller`, built from the
service (`Poller(service)`, or an instance the app already holds), with
`async sweep_once()` refreshing every active batch once with bounded
concurrency. Without it this prints `{"available": false, "reason": ...}` so
the suite still runs.

    python -m bench.poller_probe --config poller.yaml --timeout 120

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent


def _emit(data: dict[str, Any]) -> None:
    print(orjson.dumps(data).decode(), flush=True)


def _find_poller(app: Any, poller_cls: type) -> Any:
    for key in list(app):
        value = app[key]
        if isinstance(value, poller_cls):
            return value
    return None


async def probe(config_path: str, timeout: float) -> dict[str, Any]:
    if not (REPO / "gateway" / "poller.py").exists():
        return {"available": False, "reason": "gateway/poller.py is not in this tree"}
    try:
        from gateway.poller import Poller  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        return {"available": False, "reason": f"gateway.poller.Poller not found ({exc})"}
    if not hasattr(Poller, "sweep_once"):
        return {"available": False, "reason": "gateway.poller.Poller has no sweep_once()"}

    from aiohttp import web

    from gateway.api import SERVICE
    from gateway.app import create_app
    from gateway.config import load_config

    app = create_app(load_config(config_path))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        poller = _find_poller(app, Poller)
        if poller is None:
            try:
                poller = Poller(app[SERVICE])
            except TypeError as exc:
                return {"available": False, "reason": f"cannot build Poller(service): {exc}"}
        t0 = time.perf_counter()
        result = await asyncio.wait_for(poller.sweep_once(), timeout)
        seconds = time.perf_counter() - t0
        interval = getattr(poller, "interval", None) or getattr(poller, "interval_seconds", None)
        concurrency = getattr(poller, "concurrency", None)
        return {
            "available": True,
            "seconds": seconds,
            "result": result if isinstance(result, int | float | str | None) else str(result),
            "interval": float(interval) if isinstance(interval, int | float) else 30.0,
            "concurrency": concurrency if isinstance(concurrency, int) else None,
        }
    except TimeoutError:
        return {"available": True, "seconds": None, "reason": f"no result in {timeout:.0f} s"}
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    _emit(asyncio.run(probe(args.config, args.timeout)))


if __name__ == "__main__":
    main()
