"""The asyncio downloader: search candidates -> guarded, limited HTTP fetches -> ingest -> store.

One injected aiohttp session, a global and a per-host limit, timeouts, a byte cap, bounded
retries for 429 and 5xx, manual redirects, and an address guard that refuses loopback,
private, link-local, multicast and reserved addresses before connecting (`check_url`) and
again when the connection itself resolves its host (`GuardedResolver`, against DNS
rebinding). Bodies are ingested in the injected process pool; the store is only touched
through the injected single-thread `db` executor.
"""
from __future__ import annotations

import asyncio
import email.utils
import functools
import inspect
import ipaddress
import logging
import math
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Optional, Protocol, Union

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from .ingest import ingest, mb
from .types import REJECT_REASONS, Candidate, DownloadProgress, IngestLimits, IngestOutcome

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_BINARY_TYPES = ("application/octet-stream", "binary/octet-stream")
# aiohttp >= 3.10 tells connect and read timeouts apart; older versions raise ServerTimeoutError for both
_CONNECT_TIMEOUT = getattr(aiohttp, "ConnectionTimeoutError", ())
_READ_TIMEOUT = getattr(aiohttp, "SocketTimeoutError", aiohttp.ServerTimeoutError)


def _label_as_query(label: str) -> str:
    return label


@dataclass(frozen=True)
class DownloadConfig:
    concurrency: int = 32  # requests in flight, all labels together
    per_host: int = 8  # as many as fastai's 8 threads may send one host; most results sit on a few hosts
    # (upload.wikimedia.org above all), and 4 made a download host-bound
    connect_timeout: float = 5.0
    read_timeout: float = 10.0  # the longest wait for the next bytes
    total_timeout: float = 60.0  # the longest one request may take
    min_rate: int = 8 * 1024  # bytes/s, for bodies of unknown length: slower than this after `slow_after` s: given up
    slow_after: float = 5.0  # (a body of known length is given up once it cannot arrive within total_timeout)
    max_bytes: int = IngestLimits().max_bytes
    max_redirects: int = 3
    retries: int = 3  # extra tries after a 429 or 5xx
    backoff: float = 0.5  # seconds before the first retry; doubles each time
    max_retry_after: float = 10.0
    allow: tuple[str, ...] = ()  # hosts, IPs or CIDRs exempt from the address guard and the port rule
    allowed_ports: tuple[int, ...] = (80, 443)
    user_agent: str = "imgcls-workshop-bot/1.0 (classroom image-classifier workshop; downloads openly licensed images)"
    overfetch: float = 3.0  # at most this many candidates tried per missing image
    query_for: Callable[[str], str] = _label_as_query  # the search query for a label


class FetchError(Exception):
    """A URL that gave no image body; `reason` is a key of REJECT_REASONS, `detail` a sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class Blocked(FetchError):
    """A URL refused before connecting: `blocked` (its address) or `bad_url` (scheme, credentials, port)."""


# ------------------------------------------------------------------ the address guard


def _refusal(ip: IPAddress) -> Optional[str]:
    """What kind of address must not be contacted ("a loopback address"), or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and (kind := _refusal(embedded)):
            return f"an IPv6 form of {embedded}, {kind}"
    for attribute, kind in (("is_unspecified", "an unspecified"), ("is_loopback", "a loopback"),
                            ("is_link_local", "a link-local (cloud metadata)"), ("is_multicast", "a multicast"),
                            ("is_private", "a private"), ("is_reserved", "a reserved"),
                            ("is_site_local", "a site-local")):
        if getattr(ip, attribute, False):
            return f"{kind} address"
    return None if ip.is_global else "not a public address"


class AddressGuard:
    """Refuses non-public addresses, except hosts, IPs and networks named in `allow`."""

    def __init__(self, allow: Sequence[str] = ()) -> None:
        self.names: set[str] = set()
        self.networks: list[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]] = []
        for entry in allow:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip().strip("[]"), strict=False))
            except ValueError:
                self.names.add(entry.strip().rstrip(".").lower())

    def name_allowed(self, host: str) -> bool:
        return host.rstrip(".").lower() in self.names

    def address_allowed(self, ip: IPAddress) -> bool:
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return any(a in net for net in self.networks for a in (ip, mapped) if a is not None and a.version == net.version)

    def why_blocked(self, address: Union[str, IPAddress], host: Optional[str] = None) -> Optional[str]:
        """A sentence saying why this address (which `host` resolved to) is refused, or None."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        kind = None if self.address_allowed(ip) else _refusal(ip)
        if kind is None:
            return None
        return f"{ip} is {kind}" if host is None or host == str(ip) else f"{host} resolves to {ip}, {kind}"

    async def check_url(self, url: str, allowed_ports: Sequence[int] = (80, 443), timeout: float = 5.0) -> None:
        """Raise Blocked unless `url` is http(s), has no credentials, and its host is public (and its port usual)."""
        try:
            parsed = URL(url)
            scheme, host, port = parsed.scheme, parsed.raw_host, parsed.port
            has_credentials = parsed.raw_user is not None or parsed.raw_password is not None
        except (ValueError, TypeError) as exc:
            raise Blocked("bad_url", f"the URL cannot be read ({exc})") from None
        if scheme not in ("http", "https"):
            raise Blocked("bad_url", f"only http and https URLs are downloaded, not {scheme or 'a relative'} URLs")
        if has_credentials:
            raise Blocked("bad_url", "the URL contains a user name or password")
        if not host or port is None:
            raise Blocked("bad_url", "the URL has no host")
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(host)]
        except ValueError:
            addresses = []
        named = not addresses and self.name_allowed(host)
        port_ok = port in allowed_ports or named
        if not addresses and not named:
            addresses = await _resolve(host, port, timeout)
        for ip in addresses:
            if why := self.why_blocked(ip, host):
                raise Blocked("blocked", why)
        if not port_ok and not (addresses and all(self.address_allowed(ip) for ip in addresses)):
            raise Blocked("bad_url", _port_refusal(port, allowed_ports))


def _port_refusal(port: int, allowed: Sequence[int]) -> str:
    return f"port {port} is not allowed (only {', '.join(map(str, allowed))})"


async def _resolve(host: str, port: int, timeout: float) -> list[IPAddress]:
    lookup = asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    try:
        infos = await asyncio.wait_for(lookup, timeout)
    except asyncio.TimeoutError:
        raise FetchError("timeout", f"the host {host} could not be looked up within {timeout:g} s") from None
    except (OSError, UnicodeError) as exc:
        raise FetchError("network", f"the host {host} could not be found ({exc})") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


class GuardedResolver(AbstractResolver):
    """A resolver for the session's connector that refuses blocked addresses (DNS rebinding)."""

    def __init__(self, guard: AddressGuard, inner: Optional[AbstractResolver] = None) -> None:
        self.guard, self._inner = guard, inner

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        if not self.guard.name_allowed(host):
            for result in results:
                if why := self.guard.why_blocked(result["host"].split("%", 1)[0], host):
                    raise Blocked("blocked", why)
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


async def check_url(url: str, config: DownloadConfig = DownloadConfig()) -> None:
    """Raise Blocked (reason `blocked` or `bad_url`) for a URL that must not be fetched."""
    await _guard(config.allow).check_url(url, config.allowed_ports, config.connect_timeout)


@functools.lru_cache(maxsize=32)
def _guard(allow: tuple[str, ...]) -> AddressGuard:
    return AddressGuard(allow)


def make_session(config: DownloadConfig = DownloadConfig()) -> aiohttp.ClientSession:
    """The session to inject: a guarded resolver, the limits, timeouts and User-Agent. Call in a running loop."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(_guard(config.allow)), limit=config.concurrency,
                                     limit_per_host=config.per_host)
    timeout = aiohttp.ClientTimeout(total=config.total_timeout, sock_connect=config.connect_timeout,
                                    sock_read=config.read_timeout)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,  # no proxy around the guard
                                 headers={"User-Agent": config.user_agent})


# ------------------------------------------------------------------ one URL


class Limiter:
    """A global and a per-host limit on requests in flight."""

    def __init__(self, total: int, per_host: int) -> None:
        self._all, self._per_host = asyncio.Semaphore(total), per_host
        self._hosts: dict[str, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        host_slot = self._hosts.setdefault(host, asyncio.Semaphore(self._per_host))
        async with host_slot, self._all:  # the host first, so waiting on a busy host holds no global slot
            yield


async def fetch(session: aiohttp.ClientSession, url: str, config: DownloadConfig = DownloadConfig(), *,
                limiter: Optional[Limiter] = None) -> bytes:
    """The image body at `url`, after the guard, retries and redirects; FetchError (or Blocked) otherwise."""
    limiter = limiter or Limiter(config.concurrency, config.per_host)
    guard = _guard(config.allow)
    for hop in range(config.max_redirects + 1):
        try:
            await guard.check_url(url, config.allowed_ports, config.connect_timeout)
        except FetchError as exc:
            raise type(exc)(exc.reason, f"redirected to {url}: {exc.detail}" if hop else exc.detail) from None
        for attempt in range(config.retries + 1):
            result = await _request(session, url, config, limiter)
            if isinstance(result, bytes):
                return result
            if isinstance(result, str):
                url = result
                break
            status, retry_after = result
            if attempt == config.retries:
                raise FetchError("http_status", f"the server answered HTTP {status} to all {attempt + 1} tries")
            delay = config.backoff * 2 ** attempt if retry_after is None else retry_after
            log.debug("HTTP %s from %s; retrying in %.1f s", status, url, delay)
            await asyncio.sleep(delay)
    raise FetchError("http_status", f"more than {config.max_redirects} redirects")


async def _request(session: aiohttp.ClientSession, url: str, config: DownloadConfig, limiter: Limiter
                   ) -> Union[bytes, str, tuple[int, Optional[float]]]:
    """One request: the body, a redirect target, or (status, Retry-After) for a retryable answer."""
    timeout = aiohttp.ClientTimeout(total=config.total_timeout, sock_connect=config.connect_timeout,
                                    sock_read=config.read_timeout)
    headers = {"User-Agent": config.user_agent, "Accept": "image/*"}
    try:
        parsed = URL(url)
        async with limiter.slot(f"{parsed.raw_host or ''}:{parsed.port}"):  # a host, as the connection pool counts
            async with session.get(url, allow_redirects=False, timeout=timeout, headers=headers) as resp:
                if resp.status in _REDIRECTS:
                    if "Location" not in resp.headers:
                        raise FetchError("http_status", f"HTTP {resp.status} redirect without a Location")
                    try:
                        return str(resp.url.join(URL(resp.headers["Location"])))
                    except ValueError:
                        raise FetchError("bad_url", "the redirect's Location cannot be read") from None
                if resp.status == 429 or resp.status >= 500:
                    return resp.status, _retry_after(resp.headers.get("Retry-After"), config.max_retry_after)
                if not 200 <= resp.status < 300:
                    raise FetchError("http_status", f"the server answered HTTP {resp.status} {resp.reason or ''}".strip())
                if not resp.content_type.startswith("image/") and resp.content_type not in _BINARY_TYPES:
                    raise FetchError("not_image", f"the server sent {resp.content_type}, not an image")
                if resp.content_length is not None and resp.content_length > config.max_bytes:
                    raise FetchError("too_large", f"the file is {mb(resp.content_length)}; the limit is "
                                                  f"{mb(config.max_bytes)}")
                return await _read_capped(resp, config.max_bytes, config.min_rate, config.slow_after,
                                          config.total_timeout)
    except FetchError:
        raise
    except _CONNECT_TIMEOUT:
        raise FetchError("timeout", f"could not connect within {config.connect_timeout:g} s") from None
    except _READ_TIMEOUT:
        raise FetchError("timeout", f"the server sent nothing for {config.read_timeout:g} s") from None
    except asyncio.TimeoutError:
        raise FetchError("timeout", f"the download took longer than {config.total_timeout:g} s") from None
    except aiohttp.ClientPayloadError:
        raise FetchError("network", "the connection broke before the whole image arrived") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise FetchError("network", f"{type(exc).__name__}: {exc}") from None


async def fetch_api(session: aiohttp.ClientSession, url: str, config: DownloadConfig, *, method: str = "GET",
                    params: Optional[dict[str, str]] = None, data: Optional[dict[str, str]] = None,
                    headers: Optional[dict[str, str]] = None, max_bytes: int = 5 * 1024 * 1024
                    ) -> tuple[int, dict[str, str], bytes]:
    """A search API's answer through the same guard as image downloads: the address guard before every hop
    (IP literals included, which the resolver never sees), redirects followed by hand, the byte cap and the
    config's timeouts. Returns (status, headers, body) of the final answer, whatever its status; FetchError
    or Blocked when there is none."""
    guard = _guard(config.allow)
    timeout = aiohttp.ClientTimeout(total=config.total_timeout, sock_connect=config.connect_timeout,
                                    sock_read=config.read_timeout)
    headers = dict(headers or {})
    origin = URL(url).origin()
    for hop in range(config.max_redirects + 1):
        try:
            await guard.check_url(url, config.allowed_ports, config.connect_timeout)
        except FetchError as exc:
            raise type(exc)(exc.reason, f"redirected to {url}: {exc.detail}" if hop else exc.detail) from None
        try:
            async with session.request(method, url, params=params, data=data, headers=headers, timeout=timeout,
                                       allow_redirects=False) as resp:
                if resp.status in _REDIRECTS and "Location" in resp.headers:
                    try:
                        target = resp.url.join(URL(resp.headers["Location"]))
                    except ValueError:
                        raise FetchError("bad_url", "the redirect's Location cannot be read") from None
                    if resp.url.scheme == "https" and target.scheme != "https":
                        raise FetchError("bad_url", "an https request was redirected to plain http; not followed")
                    if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                        method, data = "GET", None
                    if target.origin() != origin:  # credentials and form data are for the host they were meant for
                        if data is not None:
                            raise FetchError("bad_url", f"a form sent to {origin.host} was redirected to another host"
                                                        f" ({target.host}); not followed")
                        headers = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "cookie")}
                    url, params = str(target), None  # the Location carries its own query
                    continue
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise FetchError("too_large", f"the answer is {mb(resp.content_length)}; the limit is "
                                                  f"{mb(max_bytes)}")
                body = await _read_capped(resp, max_bytes)
                return resp.status, dict(resp.headers), body
        except FetchError:
            raise
        except asyncio.TimeoutError:
            raise FetchError("timeout", f"no answer within {config.total_timeout:g} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise FetchError("network", f"{type(exc).__name__}") from None
    raise FetchError("http_status", f"more than {config.max_redirects} redirects")


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, min_rate: int = 0, slow_after: float = 5.0,
                       total: float = 0.0) -> bytes:
    """The body, up to `cap` bytes. A drip is given up on after `slow_after` s instead of holding a slot until the
    total timeout: a body of known length once, at the rate so far, it would not arrive within `total` s; one of
    unknown length when it comes slower than `min_rate` bytes/s. A slow but steady link that will make it keeps
    going."""
    body = bytearray()
    started = time.monotonic()
    length = resp.content_length
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > cap:
            raise FetchError("too_large", f"the file is larger than {mb(cap)}, the limit; stopped reading there")
        elapsed = time.monotonic() - started
        if elapsed <= slow_after:
            continue
        rate = len(body) / elapsed
        hopeless = (elapsed + (length - len(body)) / rate > total) if (length and total) else rate < min_rate
        if hopeless:
            raise FetchError("timeout", f"the server sent only {mb(len(body))} in {elapsed:.0f} s; at that rate the "
                                        "image would take too long")
    return bytes(body)


def _retry_after(value: Optional[str], cap: float) -> Optional[float]:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return None if math.isnan(seconds) else min(max(seconds, 0.0), cap)


# ------------------------------------------------------------------ a whole workshop


class CandidateSource(Protocol):
    def candidates(self, query: str, sources: Sequence[str]) -> AsyncIterator[Candidate]: ...


ProgressCallback = Callable[[DownloadProgress], Any]  # may return an awaitable


@dataclass(frozen=True)
class DownloadReport:
    labels: tuple[DownloadProgress, ...]  # final counts per label (stored includes images from earlier runs)
    reasons: dict[str, int] = field(default_factory=dict, hash=False)  # all rejects of this run, by reason
    seconds: float = 0.0
    added: int = 0  # images stored by this run
    tried: int = 0  # URLs tried by this run
    errors: tuple[str, ...] = ()  # search failures, per label

    @property
    def complete(self) -> bool:
        return all(p.stored >= p.target for p in self.labels)

    def summary(self) -> str:
        per_label = "; ".join(f"{p.label}: {p.stored}/{p.target}" + (f" ({p.rejected} refused)" if p.rejected else "")
                              for p in self.labels)
        text = f"Downloaded {self.added} images ({self.tried} tried) in {self.seconds:.1f} s. {per_label}."
        if self.reasons:
            text += " Refused: " + ", ".join(f"{n} {REJECT_REASONS.get(r, r)}" for r, n in
                                             sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))) + "."
        return text + "".join(f" {e}." for e in self.errors)


@dataclass(eq=False)
class _Label:
    name: str
    target: int
    stored: int
    added: int = 0
    tried: int = 0
    in_flight: int = 0
    rejected: Counter = field(default_factory=Counter)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    error: Optional[str] = None
    stopped: bool = False

    def progress(self) -> DownloadProgress:
        return DownloadProgress(self.name, self.stored, sum(self.rejected.values()), self.target,
                                tuple(sorted(self.rejected.items())))


def _prepare(store: Store, workshop_id: int, labels: Optional[Sequence[str]]) -> tuple:
    """Everything a run reads from the store up front (runs on the db executor)."""
    names = [store.resolve_label(workshop_id, n) for n in labels] if labels is not None else store.labels(workshop_id)
    # No known hashes go to ingest: the store re-checks duplicates when it records each image.
    return (names, store.counts(workshop_id), store.attempted_urls(workshop_id), store.ingest_limits(workshop_id),
            str(store.images_dir))


async def download_images(*, session: aiohttp.ClientSession, store: Store, db: Executor, pool: Executor,
                          source: CandidateSource, workshop_id: int, per_label: int,
                          sources: Sequence[str] = ("openverse",), config: DownloadConfig = DownloadConfig(),
                          progress: Optional[ProgressCallback] = None, added_by: Optional[str] = None,
                          labels: Optional[Sequence[str]] = None) -> DownloadReport:
    """Search and download until each label has `per_label` active images (or its candidates run out)."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    names, counts, skip, limits, images_dir = await loop.run_in_executor(db, _prepare, store, workshop_id, labels)
    config = replace(config, max_bytes=min(config.max_bytes, limits.max_bytes))
    limiter = Limiter(config.concurrency, config.per_host)
    states = [_Label(name, per_label, counts.get(name, 0)) for name in names]

    def report(st: _Label) -> Optional[asyncio.Future]:
        """Call the progress callback now, so events keep their order; an awaitable it returns becomes a task."""
        try:
            result = progress(st.progress()) if progress is not None else None
            return asyncio.ensure_future(result) if inspect.isawaitable(result) else None
        except Exception:
            log.warning("the download progress callback failed", exc_info=True)
            return None

    async def settle(reported: Optional[asyncio.Future]) -> None:
        try:
            if reported is not None:
                await reported
        except Exception:
            log.warning("the download progress callback failed", exc_info=True)

    async def record(st: _Label, meta: Any, outcome: IngestOutcome, fetched: bool) -> Optional[asyncio.Future]:
        try:
            if fetched:  # ingest's outcome: the store records the image or its refusal (re-checking duplicates)
                outcome = await loop.run_in_executor(db, store.add_image, workshop_id, st.name, outcome, meta)
            else:
                await loop.run_in_executor(db, functools.partial(
                    store.record_reject, workshop_id, st.name, outcome.reason, outcome.detail, meta))
        except Exception as exc:  # the label was removed meanwhile, the disk is full...: stop this label
            log.exception("could not record %s for %r", meta.source_url, st.name)
            st.error = f"images for '{st.name}' could not be saved: {exc}"
            st.stopped = True  # feed() starts no more downloads for this label
            st.changed.set()
            return None
        if outcome.ok:
            st.stored, st.added = st.stored + 1, st.added + 1
        else:
            st.rejected[outcome.reason or "unknown"] += 1
        log.debug("%s %s: %s %s", st.name, meta.source_url, outcome.reason or "stored", outcome.detail)
        return report(st)

    async def one(st: _Label, candidate: Candidate) -> None:
        meta = candidate.meta(added_by)
        try:
            try:
                data = await fetch(session, candidate.url, config, limiter=limiter)
                outcome, fetched = await loop.run_in_executor(pool, functools.partial(
                    ingest, data, images_dir, limits=limits)), True
            except FetchError as exc:
                outcome, fetched = IngestOutcome(ok=False, reason=exc.reason, detail=exc.detail), False
            except Exception as exc:  # a broken worker or a full disk fails this image, not the whole download
                log.exception("could not ingest %s", candidate.url)
                outcome, fetched = IngestOutcome(ok=False, reason="corrupt", detail=f"it could not be processed "
                                                 f"({type(exc).__name__})"), False
            writing = asyncio.ensure_future(record(st, meta, outcome, fetched))
            try:
                await asyncio.shield(writing)
            except asyncio.CancelledError:  # once ingested, always recorded whole, before the cancel goes on
                await writing
                raise
        finally:
            st.in_flight -= 1
            st.changed.set()
        await settle(writing.result())

    async def feed(st: _Label) -> None:
        await settle(report(st))
        budget = math.ceil(max(0, st.target - st.stored) * config.overfetch)
        tasks: set[asyncio.Task] = set()
        try:
            async with aclosing(source.candidates(config.query_for(st.name), sources)) as results:
                iterator = aiter(results)
                while st.tried < budget and not st.stopped:
                    while not st.stopped and st.stored < st.target and st.stored + st.in_flight >= st.target:
                        st.changed.clear()  # wait for an in-flight download to finish
                        await st.changed.wait()
                    if st.stored >= st.target or st.stopped:
                        break
                    try:
                        candidate = await anext(iterator)
                    except StopAsyncIteration:
                        break
                    except Exception as exc:  # a search provider failing: this label stops, the others go on
                        log.warning("search for %r failed: %s", st.name, exc, exc_info=True)
                        st.error = f"search for '{st.name}' failed: {exc}"
                        break
                    if candidate.url in skip:
                        continue
                    skip.add(candidate.url)
                    st.tried += 1
                    st.in_flight += 1
                    tasks.add(asyncio.create_task(one(st, candidate)))
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    feeders = [asyncio.create_task(feed(st)) for st in states]
    try:
        await asyncio.gather(*feeders)
    finally:
        for task in feeders:
            task.cancel()
        await asyncio.gather(*feeders, return_exceptions=True)
    reasons: Counter = sum((st.rejected for st in states), Counter())
    result = DownloadReport(labels=tuple(st.progress() for st in states), reasons=dict(reasons),
                            seconds=time.monotonic() - started, added=sum(st.added for st in states),
                            tried=sum(st.tried for st in states),
                            errors=tuple(st.error for st in states if st.error))
    log.info("%s", result.summary())
    return result


__all__ = ["AddressGuard", "Blocked", "CandidateSource", "DownloadConfig", "DownloadReport", "FetchError",
           "GuardedResolver", "Limiter", "check_url", "download_images", "fetch", "make_session"]
