"""Image search providers: Openverse (the default), Wikimedia Commons and DuckDuckGo (opt-in).

`Searcher(session, config, cache=store, db=writer)` fetches result pages from each provider
and turns them into `Candidate`s with the credit their licence asks for. `candidates()`
walks the workshop's sources in order: when one runs out of results or is rate-limited,
the next one fills the gap. Every successful page is cached in the store per
(provider, query, page, params), so running a download again does not hit the APIs again.

Base URLs are settings (`SearchConfig`), so tests can point them at a local fake server.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import html
import json
import logging
import re
import time
from contextlib import aclosing
import dataclasses
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Optional, Sequence
from urllib.parse import urlencode

import aiohttp

from .download import Blocked, DownloadConfig, FetchError, fetch_api
from .errors import InvalidInput, NotReady, SearchUnavailable
from .types import SOURCES, Candidate

log = logging.getLogger(__name__)

ANON_PAGE_SIZE = 20  # Openverse's anonymous caps: page_size <= 20, page <= 20
ANON_MAX_PAGE = 20
AUTH_PAGE_SIZE = 500
WIKIMEDIA_PAGE_SIZE = 50
BITMAP_MIMES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif", "image/tiff"})
_CC = re.compile(r"^cc[ -]?(0|by(?:-(?:nc|nd|sa))*)(?:[ -]+(\d(?:\.\d)?))?", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class SearchConfig:
    openverse_url: str = "https://api.openverse.org"
    wikimedia_url: str = "https://commons.wikimedia.org/w/api.php"
    user_agent: str = "imgcls-workshop-bot/0.1 (image-classifier workshops; +https://github.com/imgcls-workshop)"
    openverse_client_id: Optional[str] = None
    openverse_client_secret: Optional[str] = None
    openverse_license_type: str = "commercial,modification"
    page_size: int = 20  # capped at 20 for anonymous Openverse, 50 for Wikimedia
    timeout: float = 15.0  # seconds per request
    max_pages: int = 20  # per provider and query
    max_retry_after: float = 10.0  # honour a 429's Retry-After up to this many seconds, once
    retry_delay: float = 1.0  # before the one retry after a 5xx or a network error
    ddg_max_results: int = 100  # DuckDuckGo answers in one page of up to this many
    ddgs_factory: Optional[Callable[[], Any]] = None  # returns an object with .images(query, **kw); default ddgs.DDGS
    max_bytes: int = 5 * 1024 * 1024  # the largest answer read from a search API
    allow: tuple[str, ...] = ()  # as DownloadConfig.allow: hosts exempt from the address guard (local fakes)

    @property
    def openverse_authenticated(self) -> bool:
        return bool(self.openverse_client_id and self.openverse_client_secret)

    @property
    def fetch_config(self) -> DownloadConfig:
        """The downloader's guard and limits, with this config's timeout, for requests to the APIs."""
        return DownloadConfig(allow=self.allow, connect_timeout=min(5.0, self.timeout), read_timeout=self.timeout,
                              total_timeout=self.timeout)

    def __repr__(self) -> str:  # never show the client secret, even in a traceback
        shown = ", ".join(f"{f.name}={'***' if 'secret' in f.name and getattr(self, f.name) else getattr(self, f.name)!r}"
                          for f in dataclasses.fields(self))
        return f"SearchConfig({shown})"


def clean_license(name: Optional[str], version: Optional[str] = None) -> Optional[str]:
    """'by-sa' + '4.0' or 'CC BY-SA 4.0' -> 'by-sa 4.0'; other names are kept as given."""
    name = (name or "").strip()
    if not name:
        return None
    m = _CC.match(name)
    if m:
        code, ver = m.group(1).lower(), m.group(2) or version or ("1.0" if m.group(1) == "0" else "")
        return f"{'cc0' if code == '0' else code} {ver}".strip()
    return f"{name} {version}".strip() if version else name


def strip_html(text: Optional[str]) -> Optional[str]:
    text = " ".join(html.unescape(_TAGS.sub(" ", text or "")).split())
    return text or None


def check_sources(sources: Sequence[str] | str) -> list[str]:
    """The named image sources, checked and de-duplicated in order; a comma-separated string is accepted."""
    if isinstance(sources, str):
        sources = sources.split(",")
    sources = [s.strip().lower() for s in sources if s.strip()]
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise InvalidInput(f"Unknown image source {', '.join(map(repr, bad)) or '(none given)'}; "
                           f"choose from {', '.join(SOURCES)}.")
    return list(dict.fromkeys(sources))


class Searcher:
    """Searches the image providers for one process; share one per aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, config: SearchConfig = SearchConfig(), *,
                 cache: Any = None, db: Optional[concurrent.futures.Executor] = None):
        if cache is not None and db is None:  # the store is used from one thread: give it one of its own
            db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="search-cache")
        self.session, self.config, self.cache, self.db = session, config, cache, db
        self._token: Optional[tuple[str, float]] = None  # (access token, monotonic expiry)
        self._token_lock = asyncio.Lock()

    # ------------------------------------------------------------ public

    async def page(self, provider: str, query: str, page: int) -> list[Candidate]:
        """One page of results, from the cache or the API. Raises SearchUnavailable on refusal."""
        check_sources([provider])
        return (await self._page(provider, query.strip(), page))[0]

    async def candidates(self, query: str, sources: Sequence[str] = ("openverse",)) -> AsyncIterator[Candidate]:
        """Candidates from each source in turn, page by page, each image URL once. Stop iterating when
        you have enough; when every source has run out or refused, the iteration just ends."""
        sources = check_sources(sources)
        query = query.strip()
        if not query:
            raise InvalidInput("A search needs some words to search for.")
        if "ddg" in sources:
            self._ddgs_factory()  # a missing package is the host's to fix: say so before searching
        seen: set[str] = set()
        for provider in sources:
            for n in range(1, self._max_pages(provider) + 1):
                try:
                    found, more = await self._page(provider, query, n)
                except SearchUnavailable as exc:
                    log.warning("Search %s for %r stopped at page %d: %s", provider, query, n, exc)
                    break
                for cand in found:
                    if cand.url not in seen:
                        seen.add(cand.url)
                        yield cand
                if not more:
                    break
        log.info("Search for %r: no more candidates from %s (%d found)", query, ", ".join(sources), len(seen))

    async def search(self, query: str, count: int, sources: Sequence[str] = ("openverse",)) -> list[Candidate]:
        """Up to `count` candidates: fewer when every source runs out."""
        out: list[Candidate] = []
        if count <= 0:
            return out
        async with aclosing(self.candidates(query, sources)) as found:
            async for cand in found:
                out.append(cand)
                if len(out) >= count:
                    break
        return out

    # ------------------------------------------------------------ plumbing

    def _page_size(self, provider: str) -> int:
        size = max(1, self.config.page_size)
        if provider == "openverse":
            return min(size, AUTH_PAGE_SIZE if self.config.openverse_authenticated else ANON_PAGE_SIZE)
        return min(size, WIKIMEDIA_PAGE_SIZE) if provider == "wikimedia" else self.config.ddg_max_results

    def _max_pages(self, provider: str) -> int:
        if provider == "ddg":
            return 1
        if provider == "openverse" and not self.config.openverse_authenticated:
            return min(self.config.max_pages, ANON_MAX_PAGE)
        return self.config.max_pages

    def _params(self, provider: str) -> dict[str, str]:
        """The request parameters other than the query and page: part of the cache key."""
        size = str(self._page_size(provider))
        if provider == "openverse":
            return {"license_type": self.config.openverse_license_type, "mature": "false", "page_size": size}
        if provider == "wikimedia":
            return {"gsrlimit": size, "iiurlwidth": "640"}
        return {"max_results": size, "safesearch": "on"}

    async def _in_db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Store calls are blocking: run them on the DB thread, never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.db, functools.partial(fn, *args))

    async def _page(self, provider: str, query: str, page: int) -> tuple[list[Candidate], bool]:
        if page < 1:
            raise InvalidInput(f"Page numbers start at 1, not {page}.")
        params = self._params(provider)
        key = urlencode(sorted(params.items()))
        raw = None
        if self.cache is not None:
            raw = await self._in_db(self.cache.cached_search, provider, query, page, key)
        if raw is None:
            fetch = {"openverse": self._fetch_openverse, "wikimedia": self._fetch_wikimedia, "ddg": self._fetch_ddg}
            raw = await fetch[provider](query, page, params)
            if self.cache is not None:
                await self._in_db(self.cache.cache_search, provider, query, page, raw, key)
        else:
            log.debug("Search cache hit: %s %r page %d", provider, query, page)
        parse = {"openverse": self._parse_openverse, "wikimedia": self._parse_wikimedia, "ddg": self._parse_ddg}
        return parse[provider](raw, page)

    async def _get_json(self, provider: str, method: str, url: str, **kw: Any) -> Any:
        """One guarded request (imgcls.download.fetch_api) with one retry: after Retry-After (429, when short)
        or a 5xx or network error. Errors name the source and the HTTP status, never what the body said."""
        headers = {"User-Agent": self.config.user_agent, "Accept": "application/json", **kw.pop("headers", {})}
        for attempt in (1, 2):
            try:
                status, answer_headers, body = await fetch_api(
                    self.session, url, self.config.fetch_config, method=method, headers=headers,
                    params=kw.get("params"), data=kw.get("data"), max_bytes=self.config.max_bytes)
            except Blocked as exc:
                raise SearchUnavailable(f"{provider} was not asked: {exc.detail}") from None
            except FetchError as exc:
                if attempt == 2 or exc.reason == "too_large":
                    raise SearchUnavailable(f"{provider} did not answer ({exc.detail})") from None
                await asyncio.sleep(self.config.retry_delay)
                continue
            if status < 300:
                try:
                    return json.loads(body)
                except ValueError:
                    raise SearchUnavailable(f"{provider} answered HTTP {status} with something that is not JSON") \
                        from None
            retry_after = answer_headers.get("Retry-After", "")
            if status == 429:
                wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else self.config.retry_delay
                if attempt == 1 and wait <= self.config.max_retry_after:
                    log.info("%s is rate-limiting us; retrying in %.1f s", provider, wait)
                    await asyncio.sleep(wait)
                    continue
                raise SearchUnavailable(f"{provider} is rate-limiting us (HTTP 429, retry after {retry_after or '?'} s)")
            if status >= 500 and attempt == 1:
                await asyncio.sleep(self.config.retry_delay)
                continue
            if status == 401 and provider == "openverse":
                self._token = None  # an expired token: the next page asks for a new one
            log.debug("%s answered HTTP %s: %r", provider, status, body[:200])
            raise SearchUnavailable(f"{provider} answered HTTP {status}")
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ Openverse

    async def _openverse_auth(self) -> dict[str, str]:
        if not self.config.openverse_authenticated:
            return {}
        async with self._token_lock:
            if self._token is None or self._token[1] <= time.monotonic():
                data = await self._get_json("openverse", "POST", f"{self.config.openverse_url.rstrip('/')}"
                                            "/v1/auth_tokens/token/", data={
                                                "grant_type": "client_credentials",
                                                "client_id": self.config.openverse_client_id,
                                                "client_secret": self.config.openverse_client_secret})
                if not isinstance(data, dict) or not data.get("access_token"):
                    raise SearchUnavailable("openverse gave no access token; check the client id and secret")
                expires = float(data.get("expires_in") or 3600)
                self._token = (str(data["access_token"]), time.monotonic() + max(expires - 60, expires / 2))
                log.info("Openverse access token obtained (expires in %.0f s)", expires)
            return {"Authorization": f"Bearer {self._token[0]}"}

    async def _fetch_openverse(self, query: str, page: int, params: dict[str, str]) -> Any:
        headers = await self._openverse_auth()
        url = f"{self.config.openverse_url.rstrip('/')}/v1/images/"
        return await self._get_json("openverse", "GET", url, headers=headers,
                                    params={"q": query, "page": str(page), **params})

    def _parse_openverse(self, data: Any, page: int) -> tuple[list[Candidate], bool]:
        out = []
        results = data.get("results") or [] if isinstance(data, dict) else []
        if not isinstance(results, list):
            results = []
        for r in results:
            if not isinstance(r, dict) or not _text(r.get("url")) or r.get("mature") or r.get("filetype") == "svg":
                continue  # a malformed entry is skipped; the rest of the page still counts
            t = {k: _text(r.get(k)) for k in ("thumbnail", "foreign_landing_url", "title", "creator", "license",
                                              "license_version", "license_url", "attribution", "source", "id")}
            lic = clean_license(t["license"], t["license_version"])
            out.append(Candidate(
                provider="openverse", url=_text(r["url"]), thumbnail_url=t["thumbnail"],
                landing_url=t["foreign_landing_url"], title=t["title"], creator=t["creator"],
                license=lic, license_url=t["license_url"],
                attribution=t["attribution"] or _attribution(t["title"], t["creator"], lic, t["license_url"],
                                                             t["source"] or "Openverse"),
                width=_int(r.get("width")), height=_int(r.get("height")), id=t["id"]))
        page_count = _int(data.get("page_count")) or 0 if isinstance(data, dict) else 0
        return out, bool(results) and page < page_count

    # ------------------------------------------------------------ Wikimedia Commons

    async def _fetch_wikimedia(self, query: str, page: int, params: dict[str, str]) -> Any:
        size = int(params["gsrlimit"])
        data = await self._get_json("wikimedia", "GET", self.config.wikimedia_url, params={
            "action": "query", "format": "json", "formatversion": "2", "generator": "search",
            "gsrnamespace": "6", "gsrsearch": f"filetype:bitmap {query}", "gsroffset": str((page - 1) * size),
            "prop": "imageinfo", "iiprop": "url|size|mime|extmetadata", **params})
        if isinstance(data, dict) and "error" in data:
            error = data["error"] if isinstance(data["error"], dict) else {}
            raise SearchUnavailable(f"wikimedia refused the search ({_text(error.get('code')) or 'no error code'})")
        return data

    def _parse_wikimedia(self, data: Any, page: int) -> tuple[list[Candidate], bool]:
        data = data if isinstance(data, dict) else {}
        query = data.get("query") if isinstance(data.get("query"), dict) else {}
        pages = query.get("pages") or []
        if isinstance(pages, dict):  # formatversion=1
            pages = list(pages.values())
        out = []
        pages = [p for p in pages if isinstance(p, dict)] if isinstance(pages, list) else []
        for p in sorted(pages, key=lambda p: _int(p.get("index")) or 0):
            info = (p.get("imageinfo") or [{}])[0] if isinstance(p.get("imageinfo"), list) else {}
            if not isinstance(info, dict) or info.get("mime") not in BITMAP_MIMES or not (
                    _text(info.get("thumburl")) or _text(info.get("url"))):
                continue
            extmetadata = info.get("extmetadata") if isinstance(info.get("extmetadata"), dict) else {}
            meta = {k: strip_html(_text(v.get("value"))) for k, v in extmetadata.items() if isinstance(v, dict)}
            title = meta.get("ObjectName") or re.sub(r"^File:|\.\w+$", "", _text(p.get("title")) or "") or None
            lic = clean_license(meta.get("LicenseShortName") or meta.get("UsageTerms"))
            out.append(Candidate(
                provider="wikimedia", url=_text(info.get("thumburl")) or _text(info.get("url")),
                thumbnail_url=_text(info.get("thumburl")), landing_url=_text(info.get("descriptionurl")), title=title,
                creator=meta.get("Artist"), license=lic,
                license_url=meta.get("LicenseUrl"),
                attribution=_attribution(title, meta.get("Artist"), meta.get("LicenseShortName") or lic,
                                         meta.get("LicenseUrl"), "Wikimedia Commons"),
                width=_int(info.get("thumbwidth")) or _int(info.get("width")),
                height=_int(info.get("thumbheight")) or _int(info.get("height")),
                id=_text(p.get("pageid"))))
        more = data.get("continue")
        return out, bool(pages) and isinstance(more, dict) and "gsroffset" in more

    # ------------------------------------------------------------ DuckDuckGo (opt-in, licence unknown)

    def _ddgs_factory(self) -> Callable[[], Any]:
        if self.config.ddgs_factory is not None:
            return self.config.ddgs_factory
        try:
            from ddgs import DDGS  # optional: only hosts who opt in to DuckDuckGo install it
        except ImportError:
            raise NotReady("DuckDuckGo search needs the ddgs package: run `pip install ddgs`, "
                           "or use the openverse and wikimedia sources.") from None
        return DDGS

    async def _fetch_ddg(self, query: str, page: int, params: dict[str, str]) -> Any:
        if page > 1:
            return []
        factory = self._ddgs_factory()

        def run() -> list[dict[str, Any]]:
            return list(factory().images(query, max_results=int(params["max_results"]),
                                         safesearch=params["safesearch"]))
        try:
            return await asyncio.to_thread(run)
        except ImportError:
            raise NotReady("DuckDuckGo search needs the ddgs package: run `pip install ddgs`.") from None
        except Exception as exc:  # ddgs raises its own RatelimitException, TimeoutException, ...
            raise SearchUnavailable(f"ddg failed ({type(exc).__name__}: {exc})") from None

    def _parse_ddg(self, data: Any, page: int) -> tuple[list[Candidate], bool]:
        out = [Candidate(provider="ddg", url=_text(r["image"]), thumbnail_url=_text(r.get("thumbnail")),
                         landing_url=_text(r.get("url")), title=_text(r.get("title")), width=_int(r.get("width")),
                         height=_int(r.get("height")))
               for r in (data if isinstance(data, list) else []) if isinstance(r, dict) and _text(r.get("image"))]
        return out, False


def _text(value: Any) -> Optional[str]:
    """A field of a search result as text: strings and numbers; None for anything else (a malformed entry)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return value.strip() or None if isinstance(value, str) else None


def _int(value: Any) -> Optional[int]:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _attribution(title: Optional[str], creator: Optional[str], license: Optional[str],
                 license_url: Optional[str], via: str) -> Optional[str]:
    """'"Sunflower" by Ann, CC BY-SA 4.0 (https://...), via Wikimedia Commons'."""
    if not license:
        return None
    who = f'"{title}"' if title else "This image"
    who += f" by {creator}" if creator else ""
    return f"{who}, {license}" + (f" ({license_url})" if license_url else "") + f", via {via}"


__all__ = ["Searcher", "SearchConfig", "SearchUnavailable", "clean_license", "strip_html"]
