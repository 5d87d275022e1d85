"""Image search: Openverse, Wikimedia Commons and DuckDuckGo, against local fakes of their APIs."""
from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

import aiohttp
import pytest

from imgcls.errors import InvalidInput, NotReady
from imgcls.search import Searcher, SearchConfig, SearchUnavailable, clean_license
from imgcls.store import Store

from ..fakes.search_api import SearchState, ddgs_factory, serve


def run_search(state: SearchState, body: Callable[[Searcher, str], Awaitable[Any]], *, cache: Any = None,
               db: Any = None, **config: Any) -> Any:
    """Start the fake APIs, build a Searcher pointed at them, and run `body(searcher, base_url)`."""
    async def main() -> Any:
        async with serve(state) as base, aiohttp.ClientSession() as session:
            cfg = SearchConfig(openverse_url=base, wikimedia_url=f"{base}/w/api.php", retry_delay=0,
                               allow=("127.0.0.1",), **config)
            return await body(Searcher(session, cfg, cache=cache, db=db), base)
    return asyncio.run(main())


def search(state: SearchState, query: str, count: int, sources=("openverse",), **kw: Any) -> list:
    return run_search(state, lambda s, base: s.search(query, count, sources), **kw)


# ------------------------------------------------------------ Openverse


def test_openverse_results_become_candidates_with_their_credit():
    state = SearchState()
    found = search(state, "sunflower", 3)
    assert [c.provider for c in found] == ["openverse"] * 3
    first, second, third = found
    assert first.url.endswith("/img/openverse/0.jpg")
    assert first.thumbnail_url.endswith("/v1/images/4bc43a04-ef46-4544-a0c1-000000000000/thumb/")
    assert first.landing_url == "https://www.flickr.com/photos/example/0"
    assert first.title == "Sunflower 0" and first.creator == "Photographer 0"
    assert (first.license, second.license, third.license) == ("by 4.0", "by-sa 4.0", "cc0 1.0")
    assert second.license_url == "https://creativecommons.org/licenses/by-sa/4.0/"
    assert second.attribution.startswith('"Sunflower 1" by Photographer 1 is licensed under CC BY-SA 4.0')
    assert (first.width, first.height, first.id) == (640, 480, "4bc43a04-ef46-4544-a0c1-000000000000")
    assert first.meta(added_by="host").license == "by 4.0"


def test_openverse_requests_stay_within_the_anonymous_caps():
    state = SearchState(results={"openverse": 45})
    found = search(state, "lavender", 100, page_size=50, max_pages=30)
    assert len(found) == 45
    seen = [r.query for r in state.requests if r.provider == "openverse"]
    assert [q["page"] for q in seen] == ["1", "2", "3"]
    for q in seen:
        assert q["q"] == "lavender" and q["page_size"] == "20"
        assert q["license_type"] == "commercial,modification" and q["mature"] == "false"
    assert all("Authorization" not in r.headers for r in state.requests)


def test_openverse_stops_at_page_twenty_when_anonymous():
    state = SearchState(results={"openverse": 1000})
    found = search(state, "rose", 10_000, page_size=5, max_pages=50)
    assert len(found) == 100 and state.count("openverse") == 20


def test_openverse_credentials_fetch_one_token_and_send_it_as_bearer():
    state = SearchState(results={"openverse": 120})
    found = search(state, "tulip", 120, openverse_client_id="client-1", openverse_client_secret="secret-1",
                   page_size=50)
    assert len(found) == 120
    token_requests = [r for r in state.requests if r.provider == "openverse-token"]
    assert len(token_requests) == 1
    assert token_requests[0].form == {"grant_type": "client_credentials", "client_id": "client-1",
                                      "client_secret": "secret-1"}
    searches = [r for r in state.requests if r.provider == "openverse"]
    assert len(searches) == 3 and {r.query["page_size"] for r in searches} == {"50"}
    assert {r.headers["Authorization"] for r in searches} == {"Bearer token-1"}


def test_wrong_openverse_credentials_fall_through_to_the_next_source():
    state = SearchState()
    found = search(state, "tulip", 5, ("openverse", "wikimedia"), openverse_client_id="client-1",
                   openverse_client_secret="wrong")
    assert [c.provider for c in found] == ["wikimedia"] * 5
    assert state.count("openverse") == 0


# ------------------------------------------------------------ Wikimedia Commons


def test_wikimedia_extmetadata_becomes_a_credited_candidate():
    state = SearchState()
    found = search(state, "red fox", 2, ("wikimedia",))
    first = found[0]
    assert first.provider == "wikimedia"
    assert first.url.endswith("/img/wikimedia/0.jpg")  # the 640 px rendition, not the original
    assert first.thumbnail_url == first.url
    assert first.landing_url == "https://commons.wikimedia.org/wiki/File:Red_Fox_0.jpg"
    assert first.title == "Red Fox 0" and first.creator == "Artist 0"  # HTML stripped, &nbsp; decoded
    assert first.license == "by-sa 4.0" and first.license_url == "https://creativecommons.org/licenses/by-sa/4.0"
    assert first.attribution == ('"Red Fox 0" by Artist 0, CC BY-SA 4.0 '
                                 "(https://creativecommons.org/licenses/by-sa/4.0), via Wikimedia Commons")
    (request,) = [r for r in state.requests if r.provider == "wikimedia"]
    assert request.headers["User-Agent"].startswith("imgcls-workshop-bot/")
    q = request.query
    assert q["gsrsearch"] == "filetype:bitmap red fox" and q["gsrnamespace"] == "6" and q["iiurlwidth"] == "640"
    assert set(q["iiprop"].split("|")) >= {"url", "size", "mime", "extmetadata"}


def test_wikimedia_pages_on_with_the_offset_and_stops_when_nothing_continues():
    state = SearchState(results={"wikimedia": 45})
    found = search(state, "owl", 100, ("wikimedia",))
    assert len(found) == 45
    offsets = [r.query["gsroffset"] for r in state.requests if r.provider == "wikimedia"]
    assert offsets == ["0", "20", "40"]


def test_wikimedia_skips_svg():
    state = SearchState(results={"wikimedia": 4}, svg={1, 2})
    found = search(state, "owl", 10, ("wikimedia",))
    assert [c.url.rsplit("/", 1)[-1] for c in found] == ["0.jpg", "3.jpg"]


def test_wikimedia_uses_the_original_when_there_is_no_thumbnail():
    state = SearchState(results={"wikimedia": 2}, wikimedia_thumbs=False)
    found = search(state, "owl", 10, ("wikimedia",))
    assert [c.url.split("/img/")[-1] for c in found] == ["wikimedia/original/0.jpg", "wikimedia/original/1.jpg"]
    assert found[0].thumbnail_url is None and (found[0].width, found[0].height) == (4000, 3000)


def test_wikimedia_refuses_a_client_without_a_user_agent():
    state = SearchState()
    with pytest.raises(SearchUnavailable, match="403"):
        run_search(state, lambda s, base: s.page("wikimedia", "owl", 1), user_agent="Python/3.12 aiohttp/3.9")


# ------------------------------------------------------------ falling back, de-duplicating


def test_next_source_fills_the_gap_when_openverse_runs_short():
    state = SearchState(results={"openverse": 7, "wikimedia": 60})
    found = search(state, "daisy", 30, ("openverse", "wikimedia"))
    assert [c.provider for c in found] == ["openverse"] * 7 + ["wikimedia"] * 23
    assert state.count("openverse") == 1


@pytest.mark.parametrize("status", [429, 500])
def test_next_source_takes_over_when_openverse_refuses(status):
    state = SearchState()
    state.fail("openverse", status)
    found = search(state, "daisy", 5, ("openverse", "wikimedia"))
    assert [c.provider for c in found] == ["wikimedia"] * 5
    assert state.count("openverse") == 2  # one retry, then give up on it


def test_a_single_429_is_retried_after_retry_after():
    state = SearchState(retry_after="0")
    state.fail("openverse", 429, times=1)
    found = search(state, "daisy", 5, ("openverse", "wikimedia"))
    assert [c.provider for c in found] == ["openverse"] * 5 and state.count("openverse") == 2


def test_a_long_retry_after_is_not_waited_for():
    state = SearchState(retry_after="3600")
    state.fail("openverse", 429, times=1)
    found = search(state, "daisy", 5, ("openverse", "wikimedia"))
    assert [c.provider for c in found] == ["wikimedia"] * 5 and state.count("openverse") == 1


def test_when_every_source_fails_the_search_just_ends(caplog):
    state = SearchState()
    state.fail("openverse", 500)
    state.fail("wikimedia", 429)
    assert search(state, "daisy", 5, ("openverse", "wikimedia")) == []
    assert sum("stopped at page 1" in r.getMessage() for r in caplog.records) == 2


def test_candidates_are_deduplicated_by_image_url():
    state = SearchState(results={"openverse": 10, "wikimedia": 15}, same_images=True)  # Commons re-serves 0-9
    found = search(state, "moth", 100, ("openverse", "wikimedia", "openverse"))
    assert [c.provider for c in found] == ["openverse"] * 10 + ["wikimedia"] * 5
    assert len({c.url for c in found}) == 15 and found[10].url.endswith("/img/shared/10.jpg")
    assert state.count("openverse") == 1  # a source named twice is searched once


# ------------------------------------------------------------ the cache


def test_a_second_identical_search_is_served_from_the_store(tmp_path):
    state = SearchState(results={"openverse": 30, "wikimedia": 30})
    store = Store(tmp_path / "data")
    with ThreadPoolExecutor(1) as db:
        first = search(state, "cactus", 40, ("openverse", "wikimedia"), cache=store, db=db)
        requests = len(state.requests)
        assert requests == 3
        again = search(state, "cactus", 40, ("openverse", "wikimedia"), cache=store, db=db)
        assert again == first and len(state.requests) == requests
        smaller = search(state, "cactus", 5, cache=store, db=db, page_size=10)  # another page size: another entry
        assert len(smaller) == 5 and len(state.requests) == requests + 1
    assert store.cached_search("openverse", "cactus", 1, "license_type=commercial%2Cmodification&mature=false&"
                               "page_size=20")["result_count"] == 30
    store.close()


def test_errors_are_not_cached(tmp_path):
    state = SearchState()
    state.fail("openverse", 500)
    store = Store(tmp_path / "data")
    assert search(state, "cactus", 5, cache=store) == []
    state.failures.clear()
    assert len(search(state, "cactus", 5, cache=store)) == 5
    store.close()


# ------------------------------------------------------------ DuckDuckGo, sources


def test_ddg_candidates_have_no_licence_and_run_off_the_event_loop():
    calls: list = []
    found = search(SearchState(), "kiwi", 50, ("ddg",), ddgs_factory=ddgs_factory(results=12, calls=calls))
    assert len(found) == 12 and {c.provider for c in found} == {"ddg"}
    assert {c.license for c in found} == {None} and {c.attribution for c in found} == {None}
    assert found[0].url.endswith("/img/ddg/0.jpg") and found[0].landing_url == "https://example.com/0"
    assert calls == [("kiwi", {"max_results": 100, "safesearch": "on"})]


def test_ddg_is_never_a_default_source():
    state = SearchState(results={"openverse": 3})
    calls: list = []
    found = search(state, "kiwi", 10, ddgs_factory=ddgs_factory(calls=calls))
    assert len(found) == 3 and calls == []


def test_ddg_without_the_package_says_how_to_install_it(monkeypatch):
    def missing() -> Any:
        raise ImportError("No module named 'ddgs'")
    with pytest.raises(NotReady, match="pip install ddgs"):
        search(SearchState(), "kiwi", 5, ("ddg",), ddgs_factory=missing)
    monkeypatch.setitem(sys.modules, "ddgs", None)  # the lazy import fails
    with pytest.raises(NotReady, match="pip install ddgs"):
        search(SearchState(), "kiwi", 5, ("openverse", "ddg"))


def test_unknown_sources_are_refused_with_the_valid_ones():
    with pytest.raises(InvalidInput, match="openverse, wikimedia, ddg"):
        search(SearchState(), "kiwi", 5, ("openverse", "google"))
    with pytest.raises(InvalidInput):
        run_search(SearchState(), lambda s, base: s.page("bing", "kiwi", 1))


def test_licence_names_are_normalised():
    assert clean_license("by-sa", "4.0") == "by-sa 4.0"
    assert clean_license("CC BY-SA 4.0") == "by-sa 4.0"
    assert clean_license("CC0") == "cc0 1.0"
    assert clean_license("Public domain") == "Public domain"
    assert clean_license("") is None


# ------------------------------------------------------------ the address guard and hostile answers


def test_a_search_api_redirecting_to_a_private_address_is_refused_before_connecting():
    hits: list[str] = []

    async def main() -> str:
        from aiohttp import web

        async def inner(request):  # a service on another loopback address, standing in for an internal host
            hits.append(request.path)
            return web.json_response({"results": []})

        app = web.Application()
        app.router.add_get("/{tail:.*}", inner)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.2", 0)
        await site.start()
        port = runner.addresses[0][1]
        state = SearchState()
        state.redirects["openverse"] = f"http://127.0.0.2:{port}/latest/meta-data/"
        try:
            async with serve(state) as base, aiohttp.ClientSession() as session:
                cfg = SearchConfig(openverse_url=base, retry_delay=0, allow=("127.0.0.1",))
                with pytest.raises(SearchUnavailable) as caught:
                    await Searcher(session, cfg).page("openverse", "cats", 1)
                return str(caught.value)
        finally:
            await runner.cleanup()

    message = asyncio.run(main())
    assert hits == []  # never fetched
    assert "openverse" in message and "127.0.0.2 is a loopback address" in message


def test_an_ip_literal_search_url_is_checked_too():
    async def main() -> str:
        async with aiohttp.ClientSession() as session:
            cfg = SearchConfig(openverse_url="http://169.254.169.254", retry_delay=0)
            with pytest.raises(SearchUnavailable) as caught:
                await Searcher(session, cfg).page("openverse", "cats", 1)
            return str(caught.value)

    assert "169.254.169.254 is a link-local (cloud metadata) address" in asyncio.run(main())


def test_errors_name_the_source_and_status_never_the_body():
    state = SearchState(error_body="Traceback: password=hunter2 at db.internal")
    state.fail("openverse", 404)

    async def body(searcher, base):
        with pytest.raises(SearchUnavailable) as caught:
            await searcher.page("openverse", "cats", 1)
        return str(caught.value)

    message = run_search(state, body)
    assert message == "openverse answered HTTP 404"


def test_a_huge_search_answer_is_cut_at_the_byte_cap():
    state = SearchState(results={"openverse": 20})

    async def body(searcher, base):
        with pytest.raises(SearchUnavailable) as caught:
            await searcher.page("openverse", "cats", 1)
        return str(caught.value)

    message = run_search(state, body, max_bytes=2000)
    assert "openverse did not answer" in message and "limit" in message


def test_a_malformed_result_is_skipped_and_the_rest_of_the_page_kept():
    state = SearchState(results={"openverse": 5}, malformed={1, 3})
    found = search(state, "sunflower", 10)
    assert len(found) == 3 and all(isinstance(c.url, str) for c in found)


def test_the_config_never_shows_the_client_secret():
    cfg = SearchConfig(openverse_client_id="client-1", openverse_client_secret="secret-1")
    assert "secret-1" not in repr(cfg) and "client-1" in repr(cfg)


def test_credentials_never_follow_a_redirect_to_another_host():
    from aiohttp import web

    from imgcls.download import DownloadConfig, FetchError, fetch_api

    seen: list[dict] = []

    async def main() -> None:
        async def other(request):  # the host a redirect points to
            seen.append({"method": request.method, "auth": request.headers.get("Authorization"),
                         "body": await request.text()})
            return web.json_response({"ok": True})

        async def first(request):
            return web.Response(status=int(request.query.get("status", "302")),
                                headers={"Location": f"http://127.0.0.2:{ports['other']}/landing"})

        ports, runners = {}, []
        for name, host, handler in (("other", "127.0.0.2", other), ("first", "127.0.0.1", first)):
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, host, 0).start()
            ports[name] = runner.addresses[0][1]
            runners.append(runner)
        config = DownloadConfig(allow=("127.0.0.1", "127.0.0.2"))
        try:
            async with aiohttp.ClientSession() as session:
                base = f"http://127.0.0.1:{ports['first']}/token"
                with pytest.raises(FetchError, match="redirected to another host"):
                    await fetch_api(session, base + "?status=307", config, method="POST",
                                    data={"client_secret": "S3CRET"}, headers={"Authorization": "Bearer T0KEN"})
                status, _, _ = await fetch_api(session, base, config, headers={"Authorization": "Bearer T0KEN"})
                assert status == 200
        finally:
            for runner in runners:
                await runner.cleanup()

    asyncio.run(main())
    assert seen == [{"method": "GET", "auth": None, "body": ""}]  # the form never left; the token stayed behind
