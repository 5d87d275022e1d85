"""`python -m tests.fakes.run_bot`: the real bot process (`bot.__main__.main`), pointed at a local Discord.

FAKE_DISCORD_API (the REST base, e.g. http://127.0.0.1:1234/api/v10) and FAKE_DISCORD_GATEWAY (its
websocket) replace discord.py's URLs; everything else comes from the environment as for `make run`.
For tests that need the bot as its own process: killed with SIGKILL, say.
"""
from __future__ import annotations

import os
import sys


def main() -> int:
    import discord
    import yarl

    discord.http.Route.BASE = os.environ["FAKE_DISCORD_API"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["FAKE_DISCORD_GATEWAY"])
    from bot.__main__ import main as bot_main

    return bot_main()


if __name__ == "__main__":
    sys.exit(main())
