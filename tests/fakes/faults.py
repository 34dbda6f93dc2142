"""Fault injection and busy-account traffic shared by the fake upstreams.

A fake's state dataclass inherits `FaultState`; its middleware hands each authenticated
request to `serve`, which picks at most one fault for it (from the `fail_next` queue, else
one draw against `fault_rates`) and plays it out. Faults are chosen only for requests whose
"METHOD /path" starts with `fail_on` (None: every request). The kinds:

- an int status: answer that error envelope before doing anything;
- "hang": never answer (the client gives up);
- "reset": drop the connection before doing anything;
- "malformed": answer 200 with a truncated JSON body, without doing anything;
- "reset_after": carry the request out, then drop the connection;
- "error_after": carry the request out, then answer 500;
- "slow_after": carry the request out, then answer after `slow_answer_seconds`;
- "deferred_error": answer 500 at once, carry the request out `defer_seconds` later;
- "deferred_hang": never answer, carry the request out `defer_seconds` after it arrived.

Deferred kinds replay the request from its already-read body through a *replayer* the fake
registers for the route ("POST /v1/batches"), in a background task that needs no open
connection. `Ledger` is the insertion-ordered store both fakes page their lists from, and
`lifecycle` is the app's cleanup context: the busy-account preload, the background creates
and the cancellation of every task the fake started, so none outlives the app.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

Json = dict[str, Any]
Fault = int | str
Run = Callable[[], Awaitable[web.StreamResponse]]
ErrorResponse = Callable[[int, str], web.StreamResponse]
# Makes one unrelated batch (someone else's traffic): (created_at, foreign gateway tag or None).
AddUnrelated = Callable[[int, str | None], object]

BEFORE = frozenset({"hang", "reset", "malformed"})
AFTER = frozenset({"reset_after", "error_after", "slow_after"})
DEFERRED = frozenset({"deferred_error", "deferred_hang"})
KINDS = BEFORE | AFTER | DEFERRED
HANG_SECONDS = 3600.0
PRELOAD_SPAN_SECONDS = 3600
GATEWAY_TAG = "gateway_batch_id"  # the metadata key a gateway tags its upstream batches with
FOREIGN_TAG_PREFIX = "batch_someoneelse"

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class FaultState:
    """Fault and traffic knobs every fake state carries; tests set them at any time."""

    # Faults for the next matching requests, popped in order (see the module docstring).
    fail_next: list[Fault] = field(default_factory=list)
    # Only requests whose "METHOD /path" starts with this get faults (None: all of them).
    fail_on: str | None = None
    # Random faults when `fail_next` is empty: kind (or status as "500") -> probability.
    # One draw per matching request; kinds are tried in order, so the rates add up.
    fault_rates: dict[str, float] = field(default_factory=dict)
    fault_seed: int | None = None
    # Every injected fault as (kind, "METHOD /path"); a status is logged as "500".
    fault_log: list[tuple[str, str]] = field(default_factory=list)
    slow_answer_seconds: float = 5.0
    defer_seconds: float = 1.0
    # A busy account: unrelated batches made at startup (spread over the previous hour)
    # and, while the app runs, made in the background at this rate.
    preload_batches: int = 0
    background_creates_per_second: float = 0.0
    _rng: random.Random | None = field(default=None, init=False, repr=False, compare=False)
    _rng_seed: int | None = field(default=None, init=False, repr=False, compare=False)
    _tasks: set[asyncio.Task[None]] = field(
        default_factory=set, init=False, repr=False, compare=False
    )


S = TypeVar("S", bound=FaultState)


@dataclass(frozen=True)
class Captured:
    """What a deferred replay needs from a request; it outlives the connection."""

    method: str
    path: str
    match_info: dict[str, str]
    body: bytes


# Carries a captured request out against the fake's own handler logic; the result is unused.
Replayer = Callable[[S, Captured], object]


def route_key(request: web.Request) -> str:
    """ "POST /v1/batches/{batch_id}/cancel": the key replayers are registered under."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource else request.path}"


def _draw(state: FaultState) -> Fault | None:
    if state._rng is None or state._rng_seed != state.fault_seed:
        state._rng, state._rng_seed = random.Random(state.fault_seed), state.fault_seed
    draw, total = state._rng.random(), 0.0
    for kind, rate in state.fault_rates.items():
        total += rate
        if draw < total:
            return int(kind) if kind.isdigit() else kind
    return None


def pick(state: FaultState, request: web.Request) -> Fault | None:
    """The fault for this request, if any, logged in `fault_log`."""
    where = f"{request.method} {request.path}"
    if not where.startswith(state.fail_on or ""):
        return None
    if state.fail_next:
        fault: Fault | None = state.fail_next.pop(0)
    elif state.fault_rates:
        fault = _draw(state)
    else:
        return None
    if fault is None:
        return None
    if not isinstance(fault, int) and fault not in KINDS:
        raise ValueError(f"unknown fault kind {fault!r}; expected a status or one of {KINDS}")
    state.fault_log.append((str(fault), where))
    return fault


def drop(request: web.Request) -> None:
    """Close the socket without an answer, as a crashed proxy or a network reset would."""
    assert request.transport is not None
    request.transport.abort()
    raise asyncio.CancelledError


def spawn(state: FaultState, work: Coroutine[Any, Any, None]) -> None:
    """Run `work` in the background; `lifecycle` cancels it if the app stops first."""
    task = asyncio.create_task(work)
    state._tasks.add(task)
    task.add_done_callback(state._tasks.discard)


async def _replay_later(state: S, replay: Replayer[S], call: Captured, delay: float) -> None:
    await asyncio.sleep(delay)
    try:
        replay(state, call)
    except Exception:
        log.exception("deferred replay of %s %s failed", call.method, call.path)


async def serve(
    state: S,
    request: web.Request,
    run: Run,
    *,
    error: ErrorResponse,
    replayers: Mapping[str, Replayer[S]],
    label: str = "Injected upstream failure",
) -> web.StreamResponse:
    """Answer `request` through `run` (the real handler), playing out its fault if any.

    Error answers come from `error(status, f"{label} ({fault})")`, in the fake's envelope.
    """
    fault = pick(state, request)
    if fault is None:
        return await run()
    if isinstance(fault, int):
        return error(fault, f"{label} ({fault})")
    if fault == "malformed":
        return web.Response(body=b'{"id": "batch_x", "stat', content_type="application/json")
    if fault == "reset":
        drop(request)
    if fault == "hang":
        await asyncio.sleep(HANG_SECONDS)
    if fault in DEFERRED:
        if (replay := replayers.get(route_key(request))) is None:
            raise LookupError(f"{fault!r} needs a replayer for {route_key(request)}")
        arrived = time.monotonic()
        body = await request.read()
        call = Captured(request.method, request.path, dict(request.match_info), body)
        delay = max(0.0, state.defer_seconds - (time.monotonic() - arrived))
        spawn(state, _replay_later(state, replay, call, delay))
        if fault == "deferred_hang":
            await asyncio.sleep(HANG_SECONDS)
        return error(500, f"{label} ({fault})")
    try:
        response = await run()
    except web.HTTPException as exc:  # an aiohttp error answer is still an answer
        response = exc
    if fault == "reset_after":
        drop(request)
    if fault == "error_after":
        return error(500, f"{label} ({fault})")
    if fault == "slow_after":
        await asyncio.sleep(state.slow_answer_seconds)
    return response


class Ledger(dict[str, Json]):
    """A dict of stored objects that pages in insertion order in O(page), not O(all).

    Keys keep the position they were first stored at; deleted keys leave a gap that paging
    skips (and still work as cursors). Store through `ledger[key] = value` only.
    """

    def __init__(self) -> None:
        super().__init__()
        self._order: list[str] = []
        self._position: dict[str, int] = {}

    def __setitem__(self, key: str, value: Json) -> None:
        if key not in self._position:
            self._position[key] = len(self._order)
            self._order.append(key)
        super().__setitem__(key, value)

    def page(
        self,
        limit: int,
        *,
        after: str | None = None,
        before: str | None = None,
        newest_first: bool = True,
        keep: Callable[[Json], bool] | None = None,
    ) -> tuple[list[Json], bool]:
        """(up to `limit` objects in list order, whether more lie that way), by cursor.

        `after`: those that follow the cursor in list order; `before`: the `limit` that
        precede it nearest to it (still in list order). An unknown cursor gives nothing.
        """
        step = -1 if newest_first else 1
        cursor = before if before is not None else after
        if cursor is None:
            start = len(self._order) - 1 if newest_first else 0
        elif (position := self._position.get(cursor)) is None:
            return [], False
        else:
            step = -step if before is not None else step
            start = position + step
        found: list[Json] = []
        index = start
        while 0 <= index < len(self._order) and len(found) <= limit:
            value = self.get(self._order[index])
            if value is not None and (keep is None or keep(value)):
                found.append(value)
            index += step
        page = found[:limit]
        return (page[::-1] if before is not None else page), len(found) > limit


def foreign_tag() -> str:
    """A gateway tag that matches no batch of ours: another gateway on the same account."""
    return FOREIGN_TAG_PREFIX + secrets.token_hex(8)


async def _keep_creating(state: FaultState, add: AddUnrelated) -> None:
    while True:
        rate = state.background_creates_per_second
        await asyncio.sleep(1 / rate if rate > 0 else 0.05)
        if state.background_creates_per_second > 0:
            add(int(time.time()), None)


def lifecycle(
    state: FaultState, add_unrelated: AddUnrelated
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's cleanup context: a busy account at startup, no task left at shutdown."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        count, now = state.preload_batches, int(time.time())
        foreign = {count * k // 4 for k in (1, 2, 3)} if count else set()
        for i in range(count):
            created_at = now - PRELOAD_SPAN_SECONDS + PRELOAD_SPAN_SECONDS * i // count
            add_unrelated(created_at, foreign_tag() if i in foreign else None)
        if state.background_creates_per_second > 0:
            spawn(state, _keep_creating(state, add_unrelated))
        yield
        tasks = list(state._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return context
