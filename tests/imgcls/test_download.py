"""Downloading search results: every URL ends stored or refused with a reason, within limits, safely."""
from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from imgcls.download import Blocked, DownloadConfig, DownloadReport, check_url, download_images, make_session
from imgcls.types import Candidate, DownloadProgress
from tests.fakes.image_server import STATS, make_app, serve

CONFIG = DownloadConfig(allow=("127.0.0.1",), connect_timeout=1.0, read_timeout=0.5, total_timeout=5.0,
                        backoff=0.01, max_retry_after=2.0, max_bytes=512 * 1024)
LICENSE = "by 4.0"


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


@pytest.fixture
def db():
    with ThreadPoolExecutor(1) as executor:
        yield executor


class FakeSource:
    """Search results from a dict of query -> URLs, counting what was pulled."""

    def __init__(self, results: dict[str, list[str]]) -> None:
        self.results, self.queries, self.pulled = results, [], 0

    async def candidates(self, query, sources):
        self.queries.append(query)
        for n, url in enumerate(self.results.get(query, [])):
            self.pulled += 1
            yield Candidate(provider="openverse", url=url, landing_url=f"https://example.org/photo/{n}",
                            title=f"{query} {n}", creator="Ada", license=LICENSE,
                            license_url="https://creativecommons.org/licenses/by/4.0/",
                            attribution=f'"{query} {n}" by Ada, CC BY 4.0', id=str(n))


def results(base: str, **paths: list[str]) -> FakeSource:
    return FakeSource({label: [base + p for p in ps] for label, ps in paths.items()})


async def download(store, db, pool, source, per_label, config=CONFIG, **kw) -> DownloadReport:
    async with make_session(config) as session:
        return await download_images(session=session, store=store, db=db, pool=pool, source=source,
                                     workshop_id=kw.pop("workshop_id", 1), per_label=per_label, config=config,
                                     added_by="tester", **kw)


def rows(store, table: str) -> dict[str, dict]:
    return {r["source_url"]: r for r in store.db[table].rows}


def redirect_to(url: str) -> str:
    return "/redirect?" + urlencode({"to": url})


REFUSED = {  # path -> (reason, a phrase of the detail)
    "/slow/s.jpg": ("timeout", "sent nothing for 0.5 s"),
    "/error/e.jpg": ("http_status", "HTTP 500 to all 4 tries"),
    "/status/404/n.jpg": ("http_status", "HTTP 404"),
    "/html-as-jpeg/h.jpg": ("not_image", "web page"),
    "/html/w.jpg": ("not_image", "text/html"),
    "/huge/big.jpg": ("too_large", "stopped reading"),
    "/huge/big2.jpg?declare=1": ("too_large", "256.0 MB"),
    "/broken/b.jpg": ("network", "connection broke"),
    "/truncated/t.jpg": ("corrupt", "truncated"),
    "/tiny/x.jpg": ("too_small", "10×10"),
    redirect_to("http://10.0.0.1/x.jpg"): ("blocked", "10.0.0.1 is a private address"),
    redirect_to("http://169.254.169.254/latest/meta-data/"): ("blocked", "169.254.169.254 is a link-local"),
    redirect_to("ftp://example.com/x.jpg"): ("bad_url", "ftp"),
    "/redirect/5/r.jpg": ("http_status", "more than 3 redirects"),
}
STORED = ["/img/g1.jpg", "/redirect/2/g2.jpg", "/retry-after/g3.jpg?seconds=0", "/error/g4.jpg?times=2"]


def test_each_url_is_stored_or_refused_with_its_reason(store, db, pool):
    ws = store.create_workshop("birds", ["robin"])
    app = make_app(huge_bytes=256 * 1024 * 1024)
    paths = [*REFUSED, *STORED, "/img/d.jpg", "/dup/d.jpg"]

    async def main():
        async with serve(app) as base:
            return base, await download(store, db, pool, results(base, robin=paths), 50, workshop_id=ws["id"])

    base, report = asyncio.run(main())
    rejects, images = rows(store, "rejects"), rows(store, "images")
    for path, (reason, phrase) in REFUSED.items():
        row = rejects[base + path]
        assert (row["reason"], row["label"], row["added_by"]) == (reason, "robin", "tester"), path
        assert phrase in row["detail"], (path, row["detail"])
    for path in STORED:
        image = images[base + path]
        assert (image["label"], image["license"], image["creator"], image["source"]) == ("robin", LICENSE, "Ada", "openverse")
        assert image["attribution"].endswith("by Ada, CC BY 4.0") and image["landing_url"].startswith("https://example.org/")
        assert (store.images_dir / image["path"]).is_file()
    # the same picture under two URLs: one is stored, the other refused as its duplicate
    kept, dropped = sorted([base + "/img/d.jpg", base + "/dup/d.jpg"], key=lambda u: u not in images)
    assert kept in images and rejects[dropped]["reason"] == "duplicate"
    assert rejects[dropped]["duplicate_of"] == images[kept]["id"]
    assert report.labels == (DownloadProgress("robin", 5, len(REFUSED) + 1, 50, report.labels[0].reasons),)
    assert report.added == 5 and report.tried == len(paths) and report.reasons["blocked"] == 2
    assert app[STATS].huge_sent < 64 * 1024 * 1024  # stopped reading at the cap, far below the 256 MB on offer
    assert "5 images" in report.summary() and "blocked address" in report.summary()


def test_a_long_retry_after_is_capped(store, db, pool):
    ws = store.create_workshop("birds", ["robin"])
    app = make_app()
    config = DownloadConfig(**{**vars(CONFIG), "max_retry_after": 0.3})

    async def main():
        async with serve(app) as base:
            source = results(base, robin=["/retry-after/b.jpg?seconds=3600"])
            return await download(store, db, pool, source, 1, config=config, workshop_id=ws["id"])

    report = asyncio.run(main())
    assert report.labels[0].stored == 1 and not report.reasons
    first, second = app[STATS].times["/retry-after/b.jpg"]
    assert 0.25 <= second - first < 2.0  # an hour asked for, 0.3 s waited: not the 0.01 s backoff either


def test_429_waits_for_retry_after_then_the_image_is_stored(store, db, pool):
    ws = store.create_workshop("birds", ["robin"])
    app = make_app()

    async def main():
        async with serve(app) as base:
            return await download(store, db, pool, results(base, robin=["/retry-after/a.jpg?seconds=1"]), 1,
                                  workshop_id=ws["id"])

    assert asyncio.run(main()).labels[0].stored == 1
    first, second = app[STATS].times["/retry-after/a.jpg"]
    assert second - first >= 0.95  # not the 0.01 s backoff


def test_server_errors_are_retried_a_bounded_number_of_times(store, db, pool):
    ws = store.create_workshop("birds", ["robin"])
    app = make_app()

    async def main():
        async with serve(app) as base:
            source = results(base, robin=["/error/a.jpg", "/error/b.jpg?times=2&status=503", "/status/404/c.jpg"])
            return await download(store, db, pool, source, 5, workshop_id=ws["id"])

    report = asyncio.run(main())
    requests = app[STATS].requests
    assert (requests["/error/a.jpg"], requests["/error/b.jpg"], requests["/status/404/c.jpg"]) == (4, 3, 1)
    assert report.labels[0].stored == 1 and report.reasons == {"http_status": 2}


def test_over_fetching_reaches_the_target_despite_rejects_for_every_label(store, db, pool):
    ws = store.create_workshop("birds", ["robin", "wren"])
    app = make_app()
    mixed = {label: [p for i in range(10) for p in (f"/tiny/{label}{i}.jpg", f"/img/{label}{i}.jpg")]
             for label in ("robin", "wren")}

    async def main():
        async with serve(app) as base:
            source = results(base, **mixed)
            return source, await download(store, db, pool, source, 4, workshop_id=ws["id"])

    source, report = asyncio.run(main())
    assert store.counts(ws["id"]) == {"robin": 4, "wren": 4}
    assert [p.stored for p in report.labels] == [4, 4] and report.complete
    assert report.reasons["too_small"] >= 4
    assert source.pulled < 40 and sorted(source.queries) == ["robin", "wren"]  # stopped pulling once there


def test_stops_at_the_target(store, db, pool):
    ws = store.create_workshop("birds", ["robin"])
    app = make_app()

    async def main():
        async with serve(app) as base:
            source = results(base, robin=[f"/img/{i}.jpg" for i in range(30)])
            return source, await download(store, db, pool, source, 5, workshop_id=ws["id"])

    source, report = asyncio.run(main())
    assert store.counts(ws["id"]) == {"robin": 5}
    assert app[STATS].total == 5 and source.pulled == 5 and report.tried == 5


def test_a_label_whose_results_are_all_bad_gives_up_after_over_fetching(store, db, pool):
    ws = store.create_workshop("birds", ["robin"])
    app = make_app()

    async def main():
        async with serve(app) as base:
            source = results(base, robin=[f"/tiny/{i}.jpg" for i in range(50)])
            return await download(store, db, pool, source, 2, workshop_id=ws["id"])

    report = asyncio.run(main())
    assert report.tried == 6 and app[STATS].total == 6  # 2 missing x overfetch 3
    assert not report.complete and report.reasons == {"too_small": 6}
    assert "robin: 0/2 (6 refused)" in report.summary() and "6 too small" in report.summary()


def test_a_second_run_resumes_without_fetching_anything_again(store, db, pool):
    ws = store.create_workshop("birds", ["robin"])
    app = make_app()
    paths = ["/tiny/0.jpg", "/html/1.jpg"] + [f"/img/{i}.jpg" for i in range(10)]

    async def main():
        async with serve(app) as base:
            first = await download(store, db, pool, results(base, robin=paths), 3, workshop_id=ws["id"])
            seen = app[STATS].total
            again = await download(store, db, pool, results(base, robin=paths), 3, workshop_id=ws["id"])
            assert (again.tried, app[STATS].total) == (0, seen)  # the target is already met
            more = await download(store, db, pool, results(base, robin=paths), 6, workshop_id=ws["id"])
            return first, more

    first, more = asyncio.run(main())
    assert (first.added, more.added, more.labels[0].stored) == (3, 3, 6)
    assert max(app[STATS].requests.values()) == 1  # no URL was fetched twice
    assert store.counts(ws["id"]) == {"robin": 6}


def test_cancelling_stops_requests_in_flight_and_a_later_run_completes(store, db, pool):
    ws = store.create_workshop("birds", ["robin", "wren"])
    app = make_app(slow=60.0)
    config = DownloadConfig(**{**vars(CONFIG), "read_timeout": 30.0, "total_timeout": 60.0, "per_host": 8})
    paths = {"robin": ["/img/r0.jpg", "/img/r1.jpg"] + [f"/slow/r{i}.jpg" for i in range(2, 5)],
             "wren": [f"/slow/w{i}.jpg" for i in range(3)]}
    stats = app[STATS]

    async def main():
        async with serve(app) as base:
            task = asyncio.create_task(download(store, db, pool, results(base, **paths), 5, config=config,
                                                workshop_id=ws["id"]))
            await stats.wait_until(lambda: stats.slow_waiting == 6)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await stats.wait_until(lambda: stats.slow_cancelled == 6)  # the server saw every client go away
            assert not any("/slow/" in url for url in [*rows(store, "images"), *rows(store, "rejects")])
            for image in rows(store, "images").values():  # whatever was recorded is whole
                assert (store.images_dir / image["path"]).is_file()
            stats.slow = 0.0
            return await download(store, db, pool, results(base, **paths), 5, config=config, workshop_id=ws["id"])

    report = asyncio.run(main())
    assert store.counts(ws["id"]) == {"robin": 5, "wren": 3}
    assert [p.stored for p in report.labels] == [5, 3] and not report.reasons


def test_progress_reports_each_label_until_its_target(store, db, pool):
    ws = store.create_workshop("birds", ["robin", "wren"])
    app = make_app()
    events: list[DownloadProgress] = []

    async def on_progress(p: DownloadProgress) -> None:  # async callbacks are awaited; plain ones work too
        await asyncio.sleep(0)
        events.append(p)

    async def main():
        async with serve(app) as base:
            source = results(base, robin=["/tiny/a.jpg"] + [f"/img/r{i}.jpg" for i in range(9)],
                             wren=[f"/img/w{i}.jpg" for i in range(9)])
            return await download(store, db, pool, source, 4, progress=on_progress, workshop_id=ws["id"])

    report = asyncio.run(main())
    for label in ("robin", "wren"):
        mine = [p for p in events if p.label == label]
        assert mine[0].stored == 0 and all(p.target == 4 for p in mine)
        assert [p.stored for p in mine] == sorted(p.stored for p in mine)  # never goes back
        assert mine[-1].stored == 4 and mine[-1] == next(p for p in report.labels if p.label == label)
    robin = [p for p in events if p.label == "robin"]
    assert robin[-1].rejected == 1 and robin[-1].reasons == (("too_small", 1),)

    plain: list[DownloadProgress] = []

    async def again():
        async with serve(make_app()) as base:
            await download(store, db, pool, results(base, robin=[f"/img/x{i}.jpg" for i in range(3)]), 6,
                           progress=plain.append, workshop_id=ws["id"], labels=["ROBIN"])

    asyncio.run(again())
    assert [p.stored for p in plain] == [4, 5, 6] and {p.label for p in plain} == {"robin"}


# ------------------------------------------------------------------ the address guard


def test_private_addresses_are_refused_before_any_connection(store, db, pool):
    ws = store.create_workshop("birds", ["robin"])
    app = make_app()
    config = DownloadConfig(connect_timeout=1.0, read_timeout=0.5)  # no allow-list

    async def main():
        async with serve(app) as base:
            port = base.rsplit(":", 1)[1]
            urls = [f"http://127.0.0.1:{port}/img/a.jpg", f"http://[::1]:{port}/img/b.jpg",
                    f"http://localhost:{port}/img/c.jpg", f"http://0.0.0.0:{port}/img/d.jpg",
                    f"http://[::ffff:127.0.0.1]:{port}/img/e.jpg", "http://10.0.0.1/x.jpg",
                    "http://169.254.169.254/latest/meta-data/", "http://[::]/x.jpg"]
            return urls, await download(store, db, pool, FakeSource({"robin": urls}), 5, config=config,
                                        workshop_id=ws["id"])

    urls, report = asyncio.run(main())
    rejects = rows(store, "rejects")
    assert {rejects[u]["reason"] for u in urls} == {"blocked"} and report.reasons == {"blocked": len(urls)}
    assert "localhost resolves to 127.0.0.1, a loopback address" in rejects[urls[2]]["detail"]
    assert "169.254.169.254 is a link-local" in rejects[urls[6]]["detail"]
    assert app[STATS].total == 0  # nothing ever reached the server


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.com/x.jpg", "http://user:pass@93.184.216.34/x.jpg",
    "http://93.184.216.34:8080/x.jpg", "https://93.184.216.34:22/x.jpg", "http:///x.jpg", "javascript:alert(1)",
    "/relative/x.jpg",
])
def test_bad_urls_are_refused(url):
    with pytest.raises(Blocked) as refused:
        asyncio.run(check_url(url))
    assert refused.value.reason == "bad_url" and refused.value.detail


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "240.0.0.1", "255.255.255.255", "[::1]", "[::]", "[fe80::1]", "[fec0::1]", "[fd00:ec2::254]", "[ff02::1]",
    "[::ffff:127.0.0.1]", "[::ffff:10.0.0.1]", "[::ffff:169.254.169.254]", "[2002:7f00:1::1]", "[64:ff9b::a00:1]",
])
def test_non_public_addresses_are_blocked(address):
    with pytest.raises(Blocked) as refused:
        asyncio.run(check_url(f"http://{address}/x.jpg"))
    assert refused.value.reason == "blocked"


@pytest.mark.parametrize("url", ["http://93.184.216.34/x.jpg", "https://[2606:4700:4700::1111]/x.jpg"])
def test_public_addresses_pass(url):
    asyncio.run(check_url(url))


def test_the_allow_list_is_the_only_way_past_the_guard():
    url = "http://127.0.0.1:8123/x.jpg"
    for allow in [("127.0.0.1",), ("127.0.0.0/8",)]:
        asyncio.run(check_url(url, DownloadConfig(allow=allow)))  # the odd port is allowed for them too
    asyncio.run(check_url("http://localhost:8123/x.jpg", DownloadConfig(allow=("localhost",))))
    for allow in [(), ("10.0.0.0/8",), ("example.com",)]:
        with pytest.raises(Blocked):
            asyncio.run(check_url(url, DownloadConfig(allow=allow)))


def test_the_session_itself_refuses_hosts_that_resolve_to_private_addresses():
    """DNS rebinding: a name that passed the check may resolve elsewhere when connecting."""
    app = make_app()

    async def main():
        async with serve(app) as base, make_session(DownloadConfig()) as session:
            with pytest.raises(Blocked, match="loopback"):
                await session.get(f"http://localhost:{base.rsplit(':', 1)[1]}/img/a.jpg")

    asyncio.run(main())
    assert app[STATS].total == 0


class FailingOnce(ThreadPoolExecutor):
    """An ingest pool whose second job dies, as when a worker process is killed."""

    def __init__(self) -> None:
        super().__init__(2)
        self.jobs = 0

    def submit(self, fn, /, *args, **kwargs):
        self.jobs += 1
        if self.jobs == 2:
            raise RuntimeError("A process in the process pool was terminated abruptly")
        return super().submit(fn, *args, **kwargs)


def test_one_image_that_cannot_be_processed_does_not_stop_the_download(store, db):
    ws = store.create_workshop("birds", ["robin"])
    app = make_app()

    async def main():
        async with serve(app) as base:
            return await download(store, db, FailingOnce(), results(base, robin=[f"/img/r{i}.jpg" for i in range(6)]),
                                  4, workshop_id=ws["id"])

    report = asyncio.run(main())
    assert store.counts(ws["id"]) == {"robin": 4} and report.complete
    assert report.reasons == {"corrupt": 1}
    assert "could not be processed" in store._rows("SELECT detail FROM rejects")[0]["detail"]


def test_a_drip_that_cannot_arrive_in_time_is_given_up_early_and_a_slow_steady_one_is_kept():
    from imgcls.download import FetchError, fetch

    async def go():
        config = DownloadConfig(**{**vars(CONFIG), "read_timeout": 2.0, "total_timeout": 4.0, "slow_after": 1.0})
        async with serve(make_app(size=256)) as base, make_session(config) as session:
            size = len(await fetch(session, f"{base}/img/d.jpg", config))
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(FetchError) as refused:  # would need 20 s: given up after about 1 s, not 4
                await fetch(session, f"{base}/drip/d.jpg?rate={size // 20}", config)
            hopeless = loop.time() - started
            started = loop.time()
            steady = await fetch(session, f"{base}/drip/e.jpg?rate={int(size / 2.5)}", config)  # 2.5 s: kept
            return refused.value, hopeless, steady, loop.time() - started
    refusal, hopeless, steady, took = asyncio.run(go())
    assert refusal.reason == "timeout" and "would take too long" in refusal.detail
    assert hopeless < 2.0
    assert steady[:3] == b"\xff\xd8\xff" and took > 1.5
