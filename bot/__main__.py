"""`python -m bot`: read the settings, check the token, start the bot, stop cleanly on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("bot")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .settings import TOKEN_HELP, SettingsError, load_settings

    try:
        settings = load_settings(env_file=Path(".env"))
    except SettingsError as exc:
        print(f"Settings problem: {exc}\nSee .env.example for every setting.", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("discord.http").setLevel(logging.WARNING)
    if not settings.discord_token.strip():
        print(TOKEN_HELP, file=sys.stderr)
        return 2
    return asyncio.run(run(settings))


async def run(settings) -> int:
    import discord

    from .bot import WorkshopBot

    bot = WorkshopBot(settings)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    runner = asyncio.create_task(bot.start(settings.discord_token))
    stopper = asyncio.create_task(stopping.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if runner.done() and runner.exception() is not None:
        exc = runner.exception()
        if isinstance(exc, discord.LoginFailure):
            log.error("Discord refused the token (%s); reset it in the developer portal and update DISCORD_TOKEN.",
                      type(exc).__name__)
        elif isinstance(exc, discord.PrivilegedIntentsRequired):
            log.error("MESSAGE_CONTENT_INTENT is on, but the intent is not enabled for this application in the "
                      "developer portal (Bot > Privileged Gateway Intents).")
        else:
            log.error("the bot stopped: %s", exc, exc_info=exc)
        code = 1
    log.info("stopping…")
    await bot.close()
    stopper.cancel()
    if not runner.done():
        runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
