"""`batch-gateway serve | check-config | demo | hash-key | leftovers | usage`, and the
operator commands on a running gateway: `batches | batch | providers | watch`."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from gateway.admin_cli import Admin

DEFAULT_CONFIG = "config.yaml"


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"batch-gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from gateway import logs

    logs.configure(config.logging.level, config.logging.format)
    if args.workers > 1:
        from gateway.workers import supervise

        return supervise(args.workers, sys.argv[1:])
    from aiohttp import web

    from gateway.app import SERVER_ARGS, create_app
    from gateway.auth import exposure_warning
    from gateway.runtime import loop_name, new_event_loop

    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    log = logging.getLogger("gateway")
    if args.worker_index:
        log.info("worker %d: the poller runs in worker 0 only", args.worker_index)
    elif warning := exposure_warning(host, config.auth):
        banner = "!" * 78
        log.warning("\n%s\n%s\n%s", banner, warning, banner)
    loop = new_event_loop()
    web.run_app(
        create_app(config, config_path=Path(args.config).resolve(), primary=args.worker_index == 0),
        host=host,
        port=port,
        access_log=None,
        reuse_port=args.reuse_port,
        **SERVER_ARGS,
        print=lambda _: log.info("listening on http://%s:%s (%s)", host, port, loop_name(loop)),
        loop=loop,
    )
    return 0


def check_config(args: argparse.Namespace) -> int:
    from gateway.routing import Router

    config = _load(args.config)
    print(f"config: {Path(args.config).resolve()}")
    print(f"store:  {config.store.display_url()}")
    print(f"blobs:  {config.blobs.describe()}")
    print("providers:")
    for name, provider in config.providers.items():
        where = getattr(provider, "base_url", "in-process")
        state = f"disabled: {provider.disabled_reason}" if provider.disabled_reason else "enabled"
        endpoints = ", ".join(provider.endpoints) if provider.endpoints else "all"
        print(f"  {name:<12} {provider.type:<9} {where}  [{state}]  endpoints: {endpoints}")
    print("routing:")
    enabled = {n: p for n, p in config.providers.items() if not p.disabled_reason}
    for line in Router(config, enabled).table():  # type: ignore[arg-type]
        print(f"  {line}")
    return 0


def demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args.base_url, args.api_key, lines=args.lines, timeout=args.timeout)


def hash_key(args: argparse.Namespace) -> int:
    from gateway.auth import hash_key as digest

    key = args.key or getpass.getpass("gateway key: ")
    print(digest(key))
    return 0


def leftovers(args: argparse.Namespace) -> int:
    """What is still at each provider although the gateway asked for its deletion."""
    import asyncio
    import time

    from gateway.store import open_store

    async def read() -> list[str]:
        store = await open_store(_load(args.config).store.url)
        try:
            rows = await store.leftovers()
        finally:
            await store.close()
        lines = [f"{'provider':<16} {'what':<7} {'attempts':>8}  {'last error':<12} upstream id"]
        for row in rows:
            error = row.last_error or "-"
            lines.append(
                f"{row.provider:<16} {row.what:<7} {row.attempts:>8}  {error:<12} {row.upstream_id}"
            )
        waiting = sum(1 for row in rows if row.next_attempt_at > time.time())
        lines.append(f"{len(rows)} copies left at providers ({waiting} waiting for a retry)")
        return lines

    print("\n".join(asyncio.run(read())))
    return 0


def usage(args: argparse.Namespace) -> int:
    """Recorded usage and cost, as /v1/gateway/usage reports it."""
    import asyncio
    import time

    from gateway import usage_report

    start = usage_report.since(args.since, time.time())
    rows = asyncio.run(
        usage_report.read(_load(args.config).store.url, args.group_by, start, args.tenant)
    )
    if args.csv:
        print(usage_report.as_csv(args.group_by, rows), end="")
    else:
        print(usage_report.as_table(args.group_by, rows))
    return 0


def _admin(args: argparse.Namespace) -> Admin:
    from gateway import admin_cli

    key = args.api_key if args.api_key is not None else os.environ.get(admin_cli.KEY_ENV)
    return admin_cli.Admin(admin_cli.base_url(args.base_url), key or None)


def batches(args: argparse.Namespace) -> int:
    """Batches across tenants, newest first, as the admin API lists them."""
    from gateway import admin_cli

    params = {
        name: str(value)
        for name, value in (
            ("status", args.status),
            ("provider", args.provider),
            ("tenant", args.tenant),
            ("after", args.after),
            ("limit", args.limit),
        )
        if value is not None
    }
    if args.metadata is not None:
        key, sep, value = args.metadata.partition("=")
        if not sep:
            print("batch-gateway: --metadata takes KEY=VALUE", file=sys.stderr)
            return 2
        params["metadata_key"], params["metadata_value"] = key, value
    return admin_cli.list_batches(_admin(args), params, args.json, sys.stdout)


def batch(args: argparse.Namespace) -> int:
    from gateway import admin_cli

    return admin_cli.show_batch(_admin(args), args.batch_id, args.json, sys.stdout)


def providers(args: argparse.Namespace) -> int:
    from gateway import admin_cli

    return admin_cli.show_providers(_admin(args), args.json, sys.stdout)


def watch(args: argparse.Namespace) -> int:
    from gateway import admin_cli

    return admin_cli.watch(
        _admin(args), args.batch_id, interval=args.interval, timeout=args.timeout
    )


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batch-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=serve)

    p = sub.add_parser("check-config", help="validate a config and print the routing table")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=check_config)

    p = sub.add_parser("demo", help="run a batch end to end against a running gateway")
    p.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    p.add_argument("--api-key", default="demo")
    p.add_argument("--lines", type=int, default=12)
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=demo)

    p = sub.add_parser("hash-key", help="print the SHA-256 of a gateway key for config.yaml")
    p.add_argument("key", nargs="?")
    p.set_defaults(func=hash_key)

    p = sub.add_parser("leftovers", help="list copies still to be deleted at providers")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=leftovers)

    p = sub.add_parser("usage", help="print recorded usage and cost")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--group-by", choices=("tenant", "provider", "model", "day"), default="provider")
    p.add_argument("--since", help="YYYY-MM-DD or a number of days (7d); default: this month")
    p.add_argument("--tenant", help="only this tenant's usage")
    p.add_argument("--csv", action="store_true", help="CSV with every column")
    p.set_defaults(func=usage)

    # The operator commands: the admin API of a running gateway.
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument(
        "--base-url",
        help="the gateway's /v1 URL (default: $BATCH_GATEWAY_URL or http://127.0.0.1:8080/v1)",
    )
    remote.add_argument(
        "--api-key",
        help="the admin key (default: $BATCH_GATEWAY_ADMIN_KEY; none with open auth)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="the API's JSON, for scripts")

    p = sub.add_parser("batches", parents=[remote, as_json], help="list batches (admin)")
    p.add_argument("--status")
    p.add_argument("--provider")
    p.add_argument("--tenant")
    p.add_argument("--metadata", metavar="KEY=VALUE")
    p.add_argument("--limit", type=int, help="1-100, default 20")
    p.add_argument("--after", metavar="BATCH_ID", help="the next page after this batch")
    p.set_defaults(func=batches)

    p = sub.add_parser("batch", parents=[remote, as_json], help="one batch in detail (admin)")
    p.add_argument("batch_id")
    p.set_defaults(func=batch)

    p = sub.add_parser(
        "providers", parents=[remote, as_json], help="provider health and routes (admin)"
    )
    p.set_defaults(func=providers)

    p = sub.add_parser("watch", parents=[remote], help="a batch's progress until it ends")
    p.add_argument("batch_id")
    p.add_argument("--interval", type=_positive, default=2.0, help="seconds between polls")
    p.add_argument("--timeout", type=_positive, help="give up after this many seconds")
    p.set_defaults(func=watch)

    args = parser.parse_args(argv)
    return int(args.func(args))
