"""The fake search API and image server on a background thread, for code that runs its own event loop
(the CLI's asyncio.run, a benchmark's blocking baseline)."""
from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from . import image_server, search_api


@dataclass
class Servers:
    search: str  # base URL of the fake Openverse (Wikimedia at search + "/w/api.php")
    images: str  # base URL of the image server
    state: search_api.SearchState
    stats: Any  # the image server's request stats


@contextmanager
def running_servers(state: search_api.SearchState | None = None, **image_options: Any) -> Iterator[Servers]:
    """Both fakes on 127.0.0.1; each search query's results are distinct images on the image server."""
    state = state or search_api.SearchState()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        holder["stop"] = asyncio.Event()
        app = image_server.make_app(**image_options)
        async with image_server.serve(app) as images:
            state.image_base = f"{images}/img/{{query}}"
            async with search_api.serve(state) as search:
                holder["servers"] = Servers(search, images, state, app[image_server.STATS])
                ready.set()
                await holder["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the fake servers did not start")
    try:
        yield holder["servers"]
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
        loop.close()
