"""/v1/gateway/usage: recorded usage and cost, totalled by tenant, provider, model or day.

A tenant key sees its own usage; the admin key sees every tenant's, or one tenant's with
`X-Gateway-Tenant`. `start` and `end` are Unix seconds or UTC dates (YYYY-MM-DD); by
default the current calendar month. A gateway extension, not part of OpenAI's API.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from aiohttp import web

from gateway.api import json_response, service
from gateway.auth import ALL_TENANTS, tenant_of
from gateway.errors import InvalidRequest
from gateway.pricing import month_start
from gateway.store.usage import GROUPS, SUM_NAMES

GROUP_BY = tuple(GROUPS)
DATE_FORMAT = "%Y-%m-%d"


def _moment(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if re.fullmatch(r"[0-9]{1,12}", raw):  # ASCII digits only: str.isdigit takes "²"
        return int(raw)
    try:
        return int(datetime.strptime(raw, DATE_FORMAT).replace(tzinfo=UTC).timestamp())
    except ValueError:
        raise InvalidRequest(
            f"'{name}' must be Unix seconds or a date as YYYY-MM-DD.", param=name
        ) from None


def _day(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(DATE_FORMAT)


async def usage_report(request: web.Request) -> web.Response:
    group_by = request.query.get("group_by", "provider")
    if group_by not in GROUPS:
        raise InvalidRequest(f"'group_by' must be one of {', '.join(GROUP_BY)}.", param="group_by")
    now = time.time()
    start = _moment(request, "start", month_start(now))
    end = _moment(request, "end", int(now) + 1)
    if end <= start:
        raise InvalidRequest("'end' must be after 'start'.", param="end")
    tenant = tenant_of(request)
    rows = await service(request).store.usage_report(
        group_by, start, end, None if tenant == ALL_TENANTS else tenant
    )
    if group_by == "day":
        for row in rows:
            row["day"] = _day(int(row["day"]))
    total: dict[str, int | float | None] = {}
    for name in SUM_NAMES:
        values = [row[name] for row in rows if row[name] is not None]
        total[name] = sum(values) if values or name != "cost_usd" else None
    return json_response(
        {
            "object": "gateway.usage",
            "group_by": group_by,
            "start": start,
            "end": end,
            "data": rows,
            "total": total,
        }
    )
