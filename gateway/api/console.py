"""/console: the operators' and tenants' web page, three static files and no data.

The page holds no secret and no tenant's data, so it is served without a key (its
paths are in gateway.auth.PUBLIC_PATHS); everything it shows it fetches from the API
with the key the user typed, which stays in the page (session storage), never in a
URL or a cookie. The paths are a fixed list, so no request names a file on disk.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Final

from aiohttp import web

from gateway.errors import NotFound

FOLDER: Final = Path(__file__).resolve().parent.parent / "console"

# URL path -> (file in FOLDER, media type). Nothing else under /console is served.
ASSETS: Final = {
    "/console": ("index.html", "text/html"),
    "/console/console.js": ("console.js", "text/javascript"),
    "/console/console.css": ("console.css", "text/css"),
}
PATHS: Final = frozenset(ASSETS)

# No inline script or style, nothing from another origin, no framing, no form posts:
# a string that slipped into the page as markup still could not run.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@functools.cache
def _body(name: str) -> bytes:
    return (FOLDER / name).read_bytes()


async def asset(request: web.Request) -> web.Response:
    """One of the console's files, with the headers that keep it a closed page."""
    found = ASSETS.get(request.path)
    if found is None:  # the routes are exactly ASSETS' keys; this is a safety net
        raise NotFound(f"No such page: {request.path[:100]}", code=None)
    name, media_type = found
    return web.Response(body=_body(name), content_type=media_type, charset="utf-8", headers=HEADERS)
