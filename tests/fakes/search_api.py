"""A local stand-in for the Openverse and Wikimedia Commons search APIs, plus a fake `ddgs.DDGS`.

    state = SearchState(results={"openverse": 30})    # results per query, per provider
    async with serve(state) as base:                   # "http://127.0.0.1:<port>"
        config = SearchConfig(openverse_url=base, wikimedia_url=f"{base}/w/api.php", allow=("127.0.0.1",))
        ...
    assert state.count("openverse") == 2               # requests seen (cache tests)

Routes, in the real APIs' JSON shapes (field names and nesting):

- ``GET /v1/images/?q=&page=&page_size=&license_type=&mature=`` - Openverse image search:
  ``{result_count, page_count, page_size, page, results: [{id, title, url, thumbnail,
  foreign_landing_url, creator, creator_url, license, license_version, license_url, provider,
  source, filetype, width, height, mature, attribution, ...}], warnings}``. Anonymous clients
  are held to page_size <= 20 and page <= 20 (401 ``{"detail": ...}`` otherwise); a valid
  ``Authorization: Bearer`` token lifts page_size to 500.
- ``POST /v1/auth_tokens/token/`` (form: grant_type=client_credentials, client_id, client_secret)
  -> ``{access_token, scope, expires_in, token_type}`` for the clients in ``state.clients``.
- ``GET /w/api.php?action=query&generator=search&gsrsearch=&gsrlimit=&gsroffset=&prop=imageinfo...``
  - Wikimedia Commons: ``{batchcomplete, continue: {gsroffset, continue}, query: {pages: [{pageid,
  ns, title, index, imageinfo: [{url, descriptionurl, thumburl, width, height, mime,
  extmetadata: {ObjectName, Artist (HTML), LicenseShortName, LicenseUrl, UsageTerms, ...}}]}]}}``
  (``formatversion=2``; a dict keyed by page id otherwise). Requests without a descriptive
  User-Agent get 403, as Wikimedia's do.

Result ``n`` (0-based, across pages) of a provider has the image URL ``<image_base>/img/<provider>/<n>.jpg``
(``image_base`` defaults to this server; point it at an image server for end-to-end tests).
``state.same_images`` makes both providers serve ``/img/shared/<n>.jpg`` (overlapping results);
``state.wikimedia_thumbs = False`` leaves out ``thumburl``. ``state.fail(provider, status, times=None)`` makes the next requests answer 429 (with
``Retry-After: state.retry_after``) or 500; ``state.svg`` lists Wikimedia result numbers served as SVG.
``state.redirects[provider] = url`` answers 302 to ``url``; ``state.malformed`` lists Openverse result numbers whose
``url`` is an object, not a string; ``state.error_body`` is what failing requests answer.
``FakeDDGS`` / ``ddgs_factory(...)`` stand in for ``ddgs.DDGS`` (``images(query, max_results=...)``).
"""
from __future__ import annotations

import math
from urllib.parse import quote
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional

from aiohttp import web
from aiohttp.test_utils import TestServer

LICENSES = [("by", "4.0"), ("by-sa", "4.0"), ("cc0", "1.0")]
GENERIC_AGENTS = ("python-requests", "python/", "aiohttp", "curl/")


@dataclass
class Seen:
    provider: str  # openverse, openverse-token, wikimedia
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)


@dataclass
class SearchState:
    results: dict[str, int] = field(default_factory=lambda: {"openverse": 60, "wikimedia": 60})
    per_query: dict[tuple[str, str], int] = field(default_factory=dict)  # (provider, query) -> results
    clients: dict[str, str] = field(default_factory=lambda: {"client-1": "secret-1"})  # Openverse id -> secret
    token_expires_in: int = 43200
    retry_after: str = "0"
    svg: set[int] = field(default_factory=set)  # Wikimedia result numbers served as image/svg+xml
    image_base: Optional[str] = None  # where result images live; this server when None
    same_images: bool = False  # both providers serve <image_base>/img/shared/<n>.jpg (overlapping results)
    wikimedia_thumbs: bool = True  # include thumburl (as Commons does when iiurlwidth is asked for)
    requests: list[Seen] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    failures: dict[str, list[int]] = field(default_factory=dict)  # provider -> [status, times left or -1]
    redirects: dict[str, str] = field(default_factory=dict)  # provider -> a Location to answer 302 with
    malformed: set[int] = field(default_factory=set)  # Openverse result numbers whose url is not a string
    error_body: str = "Internal Server Error"  # what a failing request's body says
    creator: Optional[str] = None  # every Openverse result's creator (default "Photographer <n>")

    def total(self, provider: str, query: str) -> int:
        return self.per_query.get((provider, query), self.results.get(provider, 0))

    def count(self, provider: str) -> int:
        return sum(1 for r in self.requests if r.provider == provider)

    def fail(self, provider: str, status: int, times: Optional[int] = None) -> None:
        """Answer the next `times` requests (all, when None) to `provider` with `status`."""
        self.failures[provider] = [status, -1 if times is None else times]

    def _failure(self, provider: str) -> Optional[web.Response]:
        status, left = self.failures.get(provider, [0, 0])
        if not left:
            return None
        self.failures[provider][1] = left - 1 if left > 0 else -1
        if status == 429:
            return web.json_response({"detail": "Request was throttled. Expected available in 1 second."},
                                     status=429, headers={"Retry-After": self.retry_after})
        return web.Response(status=status, text=self.error_body)


def _base(request: web.Request, state: SearchState, query: str = "") -> str:
    """Where result images live; a ``{query}`` in ``image_base`` becomes the query, so each label's
    results are different images on an image server."""
    base = state.image_base or str(request.url.origin())
    return base.replace("{query}", quote(query.replace(" ", "-"), safe="")).rstrip("/")


def _record(request: web.Request, state: SearchState, provider: str, form: Optional[dict] = None) -> None:
    state.requests.append(Seen(provider, request.method, request.path, dict(request.query),
                               dict(request.headers), dict(form or {})))


def make_app(state: SearchState) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        _record(request, state, "openverse-token", form)
        if form.get("grant_type") != "client_credentials" or state.clients.get(form.get("client_id", "")) is None \
                or state.clients[form["client_id"]] != form.get("client_secret"):
            return web.json_response({"error": "invalid_client"}, status=401)
        tok = f"token-{len(state.tokens) + 1}"
        state.tokens.add(tok)
        return web.json_response({"access_token": tok, "scope": "read write", "expires_in": state.token_expires_in,
                                  "token_type": "Bearer"})

    async def openverse(request: web.Request) -> web.Response:
        _record(request, state, "openverse")
        if "openverse" in state.redirects:
            raise web.HTTPFound(state.redirects["openverse"])
        if (failure := state._failure("openverse")) is not None:
            return failure
        auth = request.headers.get("Authorization", "")
        authed = auth.startswith("Bearer ") and auth[7:] in state.tokens
        if auth and not authed:
            return web.json_response({"detail": "Invalid token."}, status=401)
        q = request.query
        page, size = int(q.get("page", "1")), int(q.get("page_size", "20"))
        if not authed and (size > 20 or page > 20):
            return web.json_response({"detail": "Authentication credentials were not provided. Anonymous "
                                      "requests are limited to page_size <= 20 and page <= 20."}, status=401)
        total = state.total("openverse", q.get("q", ""))
        page_count = min(math.ceil(total / size), 20 if not authed else 10_000)
        if page > max(page_count, 1):
            return web.json_response({"detail": "Invalid page."}, status=400)
        base = _base(request, state, q.get("q", ""))
        results = [_openverse_item(n, q.get("q", ""), base, str(request.url.origin()), state.same_images,
                                   state.creator) for n in range((page - 1) * size, min(page * size, total))]
        for n, item in zip(range((page - 1) * size, min(page * size, total)), results):
            if n in state.malformed:
                item["url"] = {"href": item["url"]}
        return web.json_response({"result_count": total, "page_count": page_count, "page_size": size,
                                  "page": page, "results": results, "warnings": []})

    async def wikimedia(request: web.Request) -> web.Response:
        _record(request, state, "wikimedia")
        agent = request.headers.get("User-Agent", "")
        if not agent or agent.lower().startswith(GENERIC_AGENTS):
            return web.Response(status=403, text="Please set a user-agent and respect our robot policy "
                                                 "https://w.wiki/4wJS. See also T400119.")
        if (failure := state._failure("wikimedia")) is not None:
            return failure
        q = request.query
        search = q.get("gsrsearch", "")
        query = search.removeprefix("filetype:bitmap").strip()
        limit, offset = int(q.get("gsrlimit", "10")), int(q.get("gsroffset", "0"))
        total, base = state.total("wikimedia", query), _base(request, state, query)
        pages = [_wikimedia_page(n, query, base, n in state.svg, state.wikimedia_thumbs and "iiurlwidth" in q,
                                 state.same_images)
                 for n in range(offset, min(offset + limit, total))]
        body: dict[str, Any] = {"batchcomplete": True}
        if offset + limit < total:
            body["continue"] = {"gsroffset": offset + limit, "continue": "gsroffset||"}
        if pages:
            body["query"] = {"pages": pages if q.get("formatversion") == "2" else {str(p["pageid"]): p for p in pages}}
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/v1/auth_tokens/token/", token)
    app.router.add_get("/v1/images/", openverse)
    app.router.add_get("/w/api.php", wikimedia)
    return app


def _openverse_item(n: int, query: str, base: str, origin: str, shared: bool,
                    creator: Optional[str] = None) -> dict[str, Any]:
    lic, ver = LICENSES[n % len(LICENSES)]
    ident = f"4bc43a04-ef46-4544-a0c1-{n:012d}"
    title, creator = f"{query.title()} {n}", creator or f"Photographer {n}"
    lic_url = f"https://creativecommons.org/{'publicdomain/zero' if lic == 'cc0' else 'licenses/' + lic}/{ver}/"
    lic_name = "CC0 1.0" if lic == "cc0" else f"CC {lic.upper()} {ver}"
    return {
        "id": ident, "title": title, "indexed_on": "2023-05-01T00:00:00Z",
        "foreign_landing_url": f"https://www.flickr.com/photos/example/{n}",
        "url": f"{base}/img/{'shared' if shared else 'openverse'}/{n}.jpg", "creator": creator,
        "creator_url": f"https://www.flickr.com/photos/photographer{n}", "license": lic, "license_version": ver,
        "license_url": lic_url, "provider": "flickr", "source": "flickr", "category": "photograph",
        "filesize": None, "filetype": "jpg", "tags": [{"name": query, "accuracy": None, "unstable__provider": "flickr"}],
        "attribution": f'"{title}" by {creator} is licensed under {lic_name}. '
                       f"To view a copy of this license, visit {lic_url}.",
        "fields_matched": ["title"], "mature": False, "height": 480, "width": 640,
        "thumbnail": f"{origin}/v1/images/{ident}/thumb/", "detail_url": f"{origin}/v1/images/{ident}/",
        "related_url": f"{origin}/v1/images/{ident}/related/", "unstable__sensitivity": [],
    }


def _wikimedia_page(n: int, query: str, base: str, svg: bool, thumbs: bool, shared: bool) -> dict[str, Any]:
    ext, mime = ("svg", "image/svg+xml") if svg else ("jpg", "image/jpeg")
    name = f"{query.title().replace(' ', '_')}_{n}.{ext}"
    info: dict[str, Any] = {
        "size": 2_345_678, "width": 4000, "height": 3000,
        "url": f"{base}/img/wikimedia/original/{n}.{ext}",
        "descriptionurl": f"https://commons.wikimedia.org/wiki/File:{name}",
        "descriptionshorturl": f"https://commons.wikimedia.org/w/index.php?curid={1000 + n}", "mime": mime,
        "extmetadata": {
            "DateTime": {"value": "2020-01-01 00:00:00", "source": "mediawiki-metadata", "hidden": ""},
            "ObjectName": {"value": f"{query.title()} {n}", "source": "mediawiki-metadata", "hidden": ""},
            "Artist": {"value": f'<a href="//commons.wikimedia.org/wiki/User:Artist{n}" title="User:Artist{n}">'
                                f"Artist&nbsp;{n}</a>", "source": "commons-desc-page"},
            "LicenseShortName": {"value": "CC BY-SA 4.0", "source": "commons-desc-page", "hidden": ""},
            "UsageTerms": {"value": "Creative Commons Attribution-Share Alike 4.0", "source": "commons-desc-page"},
            "LicenseUrl": {"value": "https://creativecommons.org/licenses/by-sa/4.0", "source": "commons-desc-page"},
            "AttributionRequired": {"value": "true", "source": "commons-desc-page", "hidden": ""},
            "Copyrighted": {"value": "True", "source": "commons-desc-page", "hidden": ""},
        },
    }
    if thumbs:
        folder = "shared" if shared else "wikimedia"
        info.update(thumburl=f"{base}/img/{folder}/{n}.{'png' if svg else 'jpg'}", thumbwidth=640, thumbheight=480)
    return {"pageid": 1000 + n, "ns": 6, "title": f"File:{name}", "index": n + 1, "imagerepository": "local",
            "imageinfo": [info]}


@asynccontextmanager
async def serve(state: SearchState) -> AsyncIterator[str]:
    """Run the fake on 127.0.0.1 (a free port); yields its base URL without a trailing slash."""
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


class FakeDDGS:
    """Stands in for `ddgs.DDGS`: `images(query, max_results=...)` returns DuckDuckGo-shaped dicts."""

    calls: list[tuple[str, dict[str, Any]]]

    def __init__(self, results: int = 30, base: str = "http://127.0.0.1:9", calls: Optional[list] = None):
        self.results, self.base = results, base.rstrip("/")
        self.calls = calls if calls is not None else []

    def images(self, query: str, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append((query, kwargs))
        n = min(self.results, int(kwargs.get("max_results") or 10))
        return [{"title": f"{query} {i}", "image": f"{self.base}/img/ddg/{i}.jpg",
                 "thumbnail": f"https://tse1.mm.bing.net/th?id=OIP.{i}&pid=Api", "url": f"https://example.com/{i}",
                 "height": 480, "width": 640, "source": "Bing"} for i in range(n)]


def ddgs_factory(results: int = 30, base: str = "http://127.0.0.1:9",
                 calls: Optional[list] = None) -> Callable[[], FakeDDGS]:
    """A `SearchConfig.ddgs_factory`: each call makes a FakeDDGS; `calls` collects (query, kwargs)."""
    shared = calls if calls is not None else []
    return lambda: FakeDDGS(results, base, shared)
