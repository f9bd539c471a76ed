"""The dashboard: a small vanilla-JS app served as package data by the server's own Starlette app.

There is no build step and nothing is fetched from a CDN, so the dashboard works offline and a
fresh `pip install` is all it needs. The server only hands out the page and its assets; the page
then reads everything through the REST API under `/v1/` (the one service layer, never the store),
sending the signing key as a bearer token when the server runs in production mode. So the HTML
and assets are public, and every piece of data behind them is not.

Pages are client-side routes (`/dashboard/runs/<id>` and so on): every path under `/dashboard/`
that is not an asset answers the same HTML, and the page itself shows "page not found" for paths
it does not know, as well as for runs and events the API reports missing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache, lru_cache
from html import escape
from importlib import resources
from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

ASSET_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page renders payloads sent by anyone who can send an event: they are only ever set as
# text (never as HTML), and the policy forbids any script or style not served by us as a
# second line of defence. `connect-src 'self'` keeps the API calls on this server.
SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # Always revalidate: an upgraded stepwell must not run a cached older app against its API.
    "cache-control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@cache
def _assets() -> dict[str, Asset]:
    """Every file under `static/`, read once (they are small and never change at run time)."""
    folder = resources.files("stepwell.server") / "static"
    found: dict[str, Asset] = {}
    for entry in folder.iterdir():
        name = entry.name
        suffix = name[name.rfind("."):] if "." in name else ""
        if name == "index.html" or suffix not in ASSET_TYPES:
            continue
        body = entry.read_bytes()
        found[name] = Asset(body, ASSET_TYPES[suffix],
                            '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return found


@lru_cache(maxsize=16)
def _index_html(base: str) -> bytes:
    """The page, with each asset's URL carrying its content hash, so browsers that cached an
    older version fetch the new one, and every URL under `base`, the path the server is
    mounted at (`app.mount("/stepwell", ...)`; "" at the root). The scripts read `base` from
    a meta tag and build every link and API call under it."""
    html = (resources.files("stepwell.server") / "static" / "index.html").read_text("utf-8")
    for name, asset in _assets().items():
        html = html.replace(f"/dashboard/assets/{name}\"",
                            f"/dashboard/assets/{name}?v={asset.etag.strip(chr(34))}\"")
    quoted = escape(base, quote=True)
    html = html.replace('"/dashboard', f'"{quoted}/dashboard').replace(
        "<head>\n", f'<head>\n<meta name="stepwell-base" content="{quoted}">\n', 1)
    return html.encode()


def mount_path(request: Request) -> str:
    """The path prefix this app is mounted under (Starlette's `Mount`, `--root-path`)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


async def _root(request: Request) -> Response:
    """`/` is the dashboard, as on Inngest's dev server."""
    return RedirectResponse(f"{mount_path(request)}/dashboard/runs", status_code=307)


async def _page(request: Request) -> Response:
    return Response(_index_html(mount_path(request)), media_type="text/html; charset=utf-8",
                    headers=SECURITY_HEADERS)


async def _asset(request: Request) -> Response:
    asset = _assets().get(request.path_params["name"])
    if asset is None:
        raise HTTPException(404)
    headers = {**SECURITY_HEADERS, "etag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


def dashboard_routes() -> list[Route]:
    """The dashboard's routes, to be placed after the API's (the catch-all goes last)."""
    return [
        Route("/", _root, methods=["GET"]),
        Route("/dashboard", _page, methods=["GET"]),
        Route("/dashboard/assets/{name}", _asset, methods=["GET"]),
        Route("/dashboard/{page:path}", _page, methods=["GET"]),
    ]
