"""A local Discord: REST API, gateway and attachment CDN on 127.0.0.1, for wire-level tests of a discord.py bot.

The real, unpatched discord.py client talks to it; only two class attributes point it here:

    fake = FakeDiscord()                                    # token=, bot_name=; fake.bot_user, fake.app_id, fake.owner
    guild = fake.add_guild("Workshop")                      # the bot joins it (member + role); owner is fake.owner
    chan = fake.add_channel(guild, "general")
    alice = fake.add_user("alice"); fake.add_member(guild, alice, permissions=0, roles=[])
    async with fake:                                        # start() / stop(); ephemeral port
        with fake.discord_urls():                           # sets discord.http.Route.BASE and DEFAULT_GATEWAY
            task = asyncio.create_task(bot.start(fake.token))
            await fake.wait_ready()                         # IDENTIFY checked, READY + GUILD_CREATE written
            ix = await fake.slash(alice, chan, "group sub", {"text": "x", "file": ("a.png", data, "image/png")})
            await ix.wait_response()                        # the callback body {"type": 4, "data": {...}}
            msg = await ix.wait_message()                   # first non-"thinking" Message of the interaction
            choices = await fake.autocomplete(alice, chan, "cmd", {"opt": "ca"}, focused="opt")
            ix = await fake.context_menu(alice, chan, "Menu name", msg)   # a Message (or User) target
            ix = await fake.click(alice, msg, "custom-id")  # a button (values=[...] for a select) on a message
            m = await fake.post_message(alice, chan, f"hi {fake.bot_user.mention}", attachments=[("x.jpg", b"..")])
            await fake.react(alice, m, "👍"); await fake.unreact(alice, m, "👍")
            await fake.wait_for(lambda: ..., timeout=5)        # any condition, re-checked on every server event
            await fake.wait_for_request(lambda r: r.method == "PUT" and "/reactions/" in r.path)
            await fake.wait_for_message(lambda m: m.attachments, channel=chan)
            await bot.close()

Slash options are typed from the command the bot synced (an unsynced command is a LookupError, a missing required
option a ValueError). Interactions (`Interaction`): `payload` sent, `callback` body received, `original` and
`followups` messages (`messages`), `choices` for autocomplete.

State for assertions: `requests` (Request: method, path below /api/v10, query, json, files, status, route, error;
unknown routes answer a JSON 404 and have route=None, see `unknown_requests`), `messages(channel)` and
`message(id)` (Message: content, embeds, attachments with bytes, flags, reactions {emoji: [user ids]}, reference,
interaction; ephemeral messages are included, see `Message.ephemeral`), `commands` {guild id or None: [synced
commands]}, `interactions`, `gateway_events` (dispatches sent), `gateway_received` (frames from the client),
`connections` (each gateway connection's query string).
`reconnect()` sends op 7 at once; awaiting it waits for the client's RESUME (dispatches meanwhile are replayed).

Behaviour worth knowing: replies carry Content-Type exactly `application/json` (discord.py ignores bodies
otherwise); gateway frames are plain JSON text although the client asks for compress=zlib-stream; dispatches honour
the IDENTIFY intents (without message_content, others' MESSAGE_CREATE arrive with empty content unless they mention
the bot); the bot's own messages, edits and reactions are echoed on the gateway as Discord does (ephemeral ones are
not); the first followup after a deferred ("thinking") response edits that message and keeps its ephemeral flag;
for a component interaction, @original is the message the component is on. An exception inside the fake answers
400 (a 500 would make discord.py retry for seconds) and is kept in `Request.error`.
"""
from __future__ import annotations

import asyncio
import copy
import datetime
import io
import json
import mimetypes
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from simcord.components import ComponentValidationError, validate_embeds  # Discord's embed limits

DISCORD_EPOCH = 1420070400000
EPHEMERAL, LOADING = 1 << 6, 1 << 7
ADMINISTRATOR, ALL_PERMISSIONS = 1 << 3, (1 << 53) - 1
# view channel, send messages, embed links, attach files, read history, add reactions, use application commands
EVERYONE_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 6) | (1 << 31)
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | (1 << 13) | (1 << 35) | (1 << 38)  # + manage messages, threads
INTENTS = {"GUILD_CREATE": 1 << 0, "CHANNEL_CREATE": 1 << 0, "GUILD_ROLE_CREATE": 1 << 0, "THREAD_CREATE": 1 << 0,
           "GUILD_MEMBER_ADD": 1 << 1,
           "MESSAGE_CREATE": 1 << 9, "MESSAGE_UPDATE": 1 << 9, "MESSAGE_DELETE": 1 << 9,
           "MESSAGE_REACTION_ADD": 1 << 10, "MESSAGE_REACTION_REMOVE": 1 << 10}
MESSAGE_CONTENT = 1 << 15


def iso(snowflake: int | None = None) -> str:
    ms = (snowflake >> 22) + DISCORD_EPOCH if snowflake else time.time() * 1000
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat()


def emoji_key(emoji: str) -> str:
    """Canonical reaction key: the unicode emoji itself, or "name:id" for a custom one."""
    m = re.fullmatch(r"(?:a?:)?(\w+):(\d+)", emoji.strip("<>"))
    return f"{m[1]}:{m[2]}" if m else emoji


def emoji_payload(key: str) -> dict:
    name, _, eid = key.partition(":")
    return {"id": eid, "name": name, "animated": False} if eid else {"id": None, "name": key}


class DiscordError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Upload:
    filename: str
    data: bytes
    content_type: str | None = None
    field: str = ""  # the multipart field name, e.g. "files[0]"


@dataclass
class Request:
    method: str
    path: str  # below the API base, e.g. "/channels/1/messages" (CDN fetches: "/attachments/...")
    query: dict[str, str]
    json: Any = None  # the JSON body, or the parsed payload_json of a multipart body
    files: list[Upload] = field(default_factory=list)
    status: int = 0
    route: str | None = None  # the matched route pattern; None for an unknown route
    error: str | None = None  # what went wrong in the fake while handling it (answered 400)


@dataclass(eq=False)
class User:
    id: int
    name: str
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict:
        return {"id": str(self.id), "username": self.name, "global_name": None if self.bot else self.name,
                "discriminator": "0", "avatar": None, "bot": self.bot, "public_flags": 0}


@dataclass(eq=False)
class Role:
    id: int
    name: str
    permissions: int = 0
    position: int = 0
    managed: bool = False

    def payload(self) -> dict:
        return {"id": str(self.id), "name": self.name, "permissions": str(self.permissions), "position": self.position,
                "color": 0, "hoist": False, "managed": self.managed, "mentionable": False, "icon": None, "flags": 0}


@dataclass(eq=False)
class Channel:
    id: int
    guild: Guild = field(repr=False)
    name: str
    type: int = 0
    position: int = 0
    parent: Channel | None = field(default=None, repr=False)  # threads (type 11): the channel they are in
    owner_id: int | None = None  # threads: who started it
    auto_archive_duration: int = 1440

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    @property
    def is_thread(self) -> bool:
        return self.parent is not None

    def payload(self) -> dict:
        if self.is_thread:
            return {"id": str(self.id), "type": self.type, "guild_id": str(self.guild.id), "name": self.name,
                    "parent_id": str(self.parent.id), "owner_id": str(self.owner_id), "last_message_id": None,
                    "rate_limit_per_user": 0, "message_count": 0, "member_count": 1, "flags": 0,
                    "thread_metadata": {"archived": False, "auto_archive_duration": self.auto_archive_duration,
                                        "archive_timestamp": iso(self.id), "locked": False,
                                        "create_timestamp": iso(self.id)}}
        return {"id": str(self.id), "type": self.type, "guild_id": str(self.guild.id), "name": self.name,
                "position": self.position, "permission_overwrites": [], "nsfw": False, "parent_id": None,
                "topic": None, "rate_limit_per_user": 0, "last_message_id": None}


@dataclass(eq=False)
class Member:
    user: User
    guild: Guild = field(repr=False)
    roles: list[Role]
    nick: str | None = None
    joined_at: str = field(default_factory=iso)

    @property
    def permissions(self) -> int:
        perms = self.guild.roles[0].permissions
        for role in self.roles:
            perms |= role.permissions
        return ALL_PERMISSIONS if self.user.id == self.guild.owner_id or perms & ADMINISTRATOR else perms

    def payload(self, with_user: bool = True) -> dict:
        p = {"roles": [str(r.id) for r in self.roles], "nick": self.nick, "avatar": None, "joined_at": self.joined_at,
             "premium_since": None, "deaf": False, "mute": False, "flags": 0, "pending": False,
             "communication_disabled_until": None}
        return {"user": self.user.payload(), **p} if with_user else p


@dataclass(eq=False)
class Guild:
    id: int
    name: str
    owner_id: int
    roles: list[Role] = field(default_factory=list)  # roles[0] is @everyone (id == guild id)
    channels: list[Channel] = field(default_factory=list)
    members: dict[int, Member] = field(default_factory=dict)

    def payload(self) -> dict:
        return {"id": str(self.id), "name": self.name, "owner_id": str(self.owner_id), "icon": None, "splash": None,
                "unavailable": False, "member_count": len(self.members), "large": False, "features": [],
                "roles": [r.payload() for r in self.roles],
                "channels": [c.payload() for c in self.channels if not c.is_thread],
                "members": [m.payload() for m in self.members.values()], "emojis": [], "stickers": [],
                "threads": [c.payload() for c in self.channels if c.is_thread], "presences": [], "voice_states": [], "stage_instances": [],
                "guild_scheduled_events": [], "soundboard_sounds": [], "joined_at": iso(), "preferred_locale": "en-US",
                "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0,
                "mfa_level": 0, "nsfw_level": 0, "premium_tier": 0, "system_channel_id": None, "afk_channel_id": None,
                "afk_timeout": 300, "description": None, "system_channel_flags": 0}


@dataclass(eq=False)
class Attachment:
    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    description: str | None = None
    width: int | None = None  # images only
    height: int | None = None

    def payload(self) -> dict:
        return {"id": str(self.id), "filename": self.filename, "size": len(self.data), "url": self.url,
                "proxy_url": self.url, "content_type": self.content_type, "description": self.description,
                "width": self.width, "height": self.height}


@dataclass(eq=False)
class Message:
    id: int
    channel: Channel
    author: User
    content: str = ""
    embeds: list[dict] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: int = 0
    reactions: dict[str, list[int]] = field(default_factory=dict)  # emoji key -> user ids, in reaction order
    mentions: list[User] = field(default_factory=list)
    components: list[dict] = field(default_factory=list)
    reference: dict | None = None
    interaction: Interaction | None = field(default=None, repr=False)  # set on interaction responses and followups
    type: int = 0
    edited_timestamp: str | None = None
    deleted: bool = False

    ephemeral = property(lambda self: bool(self.flags & EPHEMERAL))
    loading = property(lambda self: bool(self.flags & LOADING))
    files = property(lambda self: {a.filename: a.data for a in self.attachments})

    def payload(self, me: int, gateway: bool = False) -> dict:
        guild = self.channel.guild
        p = {"id": str(self.id), "type": self.type, "channel_id": str(self.channel.id), "author": self.author.payload(),
             "content": self.content, "timestamp": iso(self.id), "edited_timestamp": self.edited_timestamp,
             "tts": False, "mention_everyone": False, "mention_roles": [], "pinned": False, "flags": self.flags,
             "mentions": [u.payload() | ({"member": guild.members[u.id].payload(False)} if u.id in guild.members
                                         else {}) for u in self.mentions],
             "attachments": [a.payload() for a in self.attachments], "embeds": self.embeds,
             "components": self.components,
             "reactions": [{"emoji": emoji_payload(k), "count": len(v), "count_details": {"burst": 0, "normal": len(v)},
                            "me": me in v, "me_burst": False, "burst_colors": []}
                           for k, v in self.reactions.items() if v]}
        if self.reference:
            p["message_reference"] = {"type": 0, "channel_id": str(self.channel.id), "guild_id": str(guild.id),
                                      **self.reference}
        if self.interaction:
            ix = self.interaction
            p |= {"webhook_id": str(ix.fake.app_id), "application_id": str(ix.fake.app_id),
                  "interaction_metadata": {"id": str(ix.id), "type": ix.type, "user": ix.user.payload(),
                                           "authorizing_integration_owners": {"0": str(guild.id)}}}
        if gateway:
            p["guild_id"] = str(guild.id)
            if self.author.id in guild.members and not self.interaction:
                p["member"] = guild.members[self.author.id].payload(False)
        return p


@dataclass(eq=False)
class Interaction:
    fake: FakeDiscord = field(repr=False)
    id: int
    token: str
    type: int  # 2 application command, 3 message component, 4 autocomplete
    user: User
    channel: Channel
    target: Message | None = None  # the message a component was used on
    payload: dict = field(default_factory=dict, repr=False)  # the INTERACTION_CREATE data sent
    callback: dict | None = None  # the bot's callback body: {"type": 4|5|6|7|8|9, "data": {...}}
    callback_files: list[Upload] = field(default_factory=list)
    original: Message | None = None  # the response message (for components, the message they are on)
    followups: list[Message] = field(default_factory=list)

    @property
    def messages(self) -> list[Message]:
        return [m for m in [self.original, *self.followups] if m is not None and not m.deleted]

    @property
    def choices(self) -> list[dict] | None:
        return (self.callback or {}).get("data", {}).get("choices")

    async def wait_response(self, timeout: float = 10.0) -> dict:
        return await self.fake.wait_for(lambda: self.callback, timeout)

    async def wait_message(self, predicate: Callable[[Message], Any] | None = None, timeout: float = 10.0) -> Message:
        """The first message of this interaction (original, then followups) that is not "thinking" and matches."""
        test = predicate or (lambda m: True)
        return await self.fake.wait_for(lambda: next((m for m in self.messages if not m.loading and test(m)), None),
                                        timeout)


class _Connection:
    def __init__(self, ws: web.WebSocketResponse, query: dict[str, str]) -> None:
        self.ws, self.query = ws, query
        self.queue: asyncio.Queue[dict] = asyncio.Queue()
        self.sent_seq = 0


def _route(pattern: str) -> re.Pattern:
    return re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern))


class FakeDiscord:
    ROUTES = tuple((m, p, _route(p), h) for m, p, h in [
        ("GET", "/users/@me", "_me"), ("GET", "/users/{uid}", "_get_user"),
        ("GET", "/gateway", "_gateway_info"), ("GET", "/gateway/bot", "_gateway_info"),
        ("GET", "/oauth2/applications/@me", "_application"), ("GET", "/applications/@me", "_application"),
        ("GET", "/applications/{app}/commands", "_get_commands"),
        ("PUT", "/applications/{app}/commands", "_put_commands"),
        ("GET", "/applications/{app}/guilds/{gid}/commands", "_get_commands"),
        ("PUT", "/applications/{app}/guilds/{gid}/commands", "_put_commands"),
        ("POST", "/interactions/{iid}/{token}/callback", "_callback"),
        ("POST", "/webhooks/{app}/{token}", "_followup"),
        ("GET", "/webhooks/{app}/{token}/messages/{mid}", "_webhook_get"),
        ("PATCH", "/webhooks/{app}/{token}/messages/{mid}", "_webhook_edit"),
        ("DELETE", "/webhooks/{app}/{token}/messages/{mid}", "_webhook_delete"),
        ("GET", "/guilds/{gid}/members/{uid}", "_get_member"),
        ("GET", "/channels/{cid}", "_get_channel"), ("POST", "/channels/{cid}/typing", "_typing"),
        ("GET", "/channels/{cid}/messages", "_history"), ("POST", "/channels/{cid}/messages", "_create_message"),
        ("GET", "/channels/{cid}/messages/{mid}", "_get_message"),
        ("PATCH", "/channels/{cid}/messages/{mid}", "_edit_message"),
        ("DELETE", "/channels/{cid}/messages/{mid}", "_delete_message"),
        ("PUT", "/channels/{cid}/messages/{mid}/reactions/{emoji}/@me", "_add_reaction"),
        ("DELETE", "/channels/{cid}/messages/{mid}/reactions/{emoji}/{uid}", "_remove_reaction"),
        ("GET", "/channels/{cid}/messages/{mid}/reactions/{emoji}", "_reaction_users"),
        ("POST", "/channels/{cid}/messages/{mid}/threads", "_start_thread"),
    ])

    def __init__(self, token: str | None = None, bot_name: str = "TestBot", heartbeat_interval: int = 41250) -> None:
        self.token = token or f"fake.{secrets.token_urlsafe(24)}"
        self.heartbeat_interval = heartbeat_interval
        self._last_id = 0
        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self._messages: dict[int, Message] = {}
        self._files: dict[int, Attachment] = {}
        self.commands: dict[int | None, list[dict]] = {}
        self.interactions: list[Interaction] = []
        self.requests: list[Request] = []
        self.gateway_events: list[dict] = []
        self.gateway_received: list[dict] = []
        self.connections: list[_Connection] = []
        self.identify: dict | None = None
        self._conn: _Connection | None = None
        self._session_id: str | None = None
        self._session_events: list[dict] = []
        self._seq = self._ready_seq = 0
        self._event = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.bot_user = self.add_user(bot_name, bot=True)
        self.app_id = self.bot_user.id
        self.owner = self.add_user("owner")

    # ---- lifecycle and URLs
    url = property(lambda self: f"http://127.0.0.1:{self.port}")
    base_url = property(lambda self: f"{self.url}/api/v10")
    gateway_url = property(lambda self: f"ws://127.0.0.1:{self.port}/gateway")

    async def start(self) -> FakeDiscord:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._http)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        for conn in self.connections:
            if not conn.ws.closed:
                await conn.ws.close(code=1001)
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @asynccontextmanager
    async def running(self, client: Any, timeout: float = 60.0) -> AsyncIterator[None]:
        """`async with fake.running(bot):` this server up, the client logged in to it, READY and its commands
        synced; the client closed (and its task awaited) on the way out."""
        async with self:
            with self.discord_urls():
                runner = asyncio.create_task(client.start(self.token))
                try:
                    await self.wait_ready(timeout)
                    await self.wait_for(lambda: self.commands.get(None), timeout)
                    yield
                finally:
                    await client.close()
                    await asyncio.gather(runner, return_exceptions=True)

    @contextmanager
    def discord_urls(self) -> Iterator[None]:
        """Point discord.py's REST base and default gateway here, restoring them afterwards."""
        import discord
        import yarl
        old = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.base_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old

    # ---- world building
    def snowflake(self) -> int:
        value = ((int(time.time() * 1000) - DISCORD_EPOCH) << 22) | (1 << 17)
        self._last_id = max(value, self._last_id + 1)
        return self._last_id

    def add_user(self, name: str, bot: bool = False) -> User:
        user = User(self.snowflake(), name, bot)
        self.users[user.id] = user
        return user

    def add_guild(self, name: str, owner: User | None = None, bot_permissions: int = BOT_PERMISSIONS) -> Guild:
        owner = owner or self.owner
        guild = Guild(self.snowflake(), name, owner.id)
        bot_role = Role(self.snowflake(), self.bot_user.name, bot_permissions, 1, managed=True)
        guild.roles += [Role(guild.id, "@everyone", EVERYONE_PERMISSIONS), bot_role]
        guild.members[owner.id] = Member(owner, guild, [])
        guild.members[self.bot_user.id] = Member(self.bot_user, guild, [bot_role])
        self.guilds[guild.id] = guild
        self._dispatch("GUILD_CREATE", guild.payload)
        return guild

    def add_channel(self, guild: Guild, name: str, type: int = 0) -> Channel:
        channel = Channel(self.snowflake(), guild, name, type, len(guild.channels))
        guild.channels.append(channel)
        self.channels[channel.id] = channel
        self._dispatch("CHANNEL_CREATE", channel.payload)
        return channel

    def add_role(self, guild: Guild, name: str, permissions: int = 0, managed: bool = False) -> Role:
        role = Role(self.snowflake(), name, permissions, len(guild.roles), managed)
        guild.roles.append(role)
        self._dispatch("GUILD_ROLE_CREATE", lambda: {"guild_id": str(guild.id), "role": role.payload()})
        return role

    def add_member(self, guild: Guild, user: User, permissions: int | None = None, roles: list[Role] = (),
                   nick: str | None = None) -> Member:
        """`permissions` (an int) is granted through a role of its own, named after the user."""
        roles = list(roles)
        if permissions is not None:
            roles.append(self.add_role(guild, f"{user.name}-permissions", permissions))
        member = guild.members[user.id] = Member(user, guild, roles, nick)
        self._dispatch("GUILD_MEMBER_ADD", lambda: member.payload() | {"guild_id": str(guild.id)})
        return member

    def threads(self, channel: Channel) -> list[Channel]:
        """Threads started in `channel`, oldest first."""
        return [c for c in channel.guild.channels if c.parent is channel]

    def messages(self, channel: Channel) -> list[Message]:
        return [m for m in sorted(self._messages.values(), key=lambda m: m.id)
                if m.channel is channel and not m.deleted]

    def message(self, message_id: int) -> Message:
        return self._messages[int(message_id)]

    @property
    def unknown_requests(self) -> list[Request]:
        return [r for r in self.requests if r.route is None]

    # ---- waiting
    def _changed(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, condition: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Return condition()'s first truthy value, re-checking after every request, message or gateway frame."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            event = self._event
            value = condition()
            if value:
                return value
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(event.wait(), max(remaining, 0))
            except asyncio.TimeoutError:
                recent = [f"{r.method} {r.path} -> {r.status}" for r in self.requests[-6:]]
                raise asyncio.TimeoutError(f"condition not met in {timeout}s; last requests: {recent}") from None

    async def wait_for_request(self, predicate: Callable[[Request], Any], timeout: float = 10.0) -> Request:
        return await self.wait_for(lambda: next((r for r in self.requests if r.status and predicate(r)), None), timeout)

    async def wait_for_message(self, predicate: Callable[[Message], Any], channel: Channel | None = None,
                               timeout: float = 10.0) -> Message:
        def find() -> Message | None:
            pool = self.messages(channel) if channel else sorted(self._messages.values(), key=lambda m: m.id)
            return next((m for m in pool if not m.deleted and predicate(m)), None)
        return await self.wait_for(find, timeout)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the client has identified and READY plus every GUILD_CREATE went out."""
        await self.wait_for(lambda: self._conn is not None and self._ready_seq and
                            self._conn.sent_seq >= self._ready_seq, timeout)

    # ---- things users do
    def _upload(self, channel: Channel, item: Upload | tuple, description: str | None = None) -> Attachment:
        upload = item if isinstance(item, Upload) else Upload(*item)
        aid = self.snowflake()
        ctype = mimetypes.guess_type(upload.filename)[0]
        if upload.content_type not in (None, "application/octet-stream"):
            ctype = upload.content_type
        att = Attachment(aid, upload.filename, upload.data, ctype,
                         f"{self.url}/attachments/{channel.id}/{aid}/{upload.filename}", description)
        try:
            from PIL import Image
            att.width, att.height = Image.open(io.BytesIO(att.data)).size
        except (ImportError, OSError, ValueError):
            pass  # not an image
        self._files[aid] = att
        return att

    def _mentions(self, content: str, extra: list[User] = ()) -> list[User]:
        found = [self.users[int(i)] for i in re.findall(r"<@!?(\d+)>", content) if int(i) in self.users]
        return list({u.id: u for u in [*found, *extra]}.values())

    def _publish(self, msg: Message, event: str = "MESSAGE_CREATE") -> None:
        if msg.ephemeral:
            return self._changed()
        def data() -> dict:
            p = msg.payload(self.bot_user.id, gateway=True)
            hidden = msg.author is not self.bot_user and self.bot_user not in msg.mentions
            if hidden and not (self.identify or {}).get("intents", 0) & MESSAGE_CONTENT:
                p |= {"content": "", "embeds": [], "attachments": [], "components": []}
            return p
        self._dispatch(event, data)

    async def post_message(self, user: User, channel: Channel, content: str = "", *, attachments: list = (),
                           mentions: list[User] = (), reply_to: Message | None = None) -> Message:
        """A user's message in `channel` (stored and dispatched as MESSAGE_CREATE). Attachments: (filename, bytes[,
        content type]) tuples or Uploads, served from this server."""
        msg = Message(self.snowflake(), channel, user, content, type=19 if reply_to else 0,
                      mentions=self._mentions(content, list(mentions)))
        msg.attachments = [self._upload(channel, a) for a in attachments]
        if reply_to:
            msg.reference = {"message_id": str(reply_to.id)}
        self._messages[msg.id] = msg
        self._publish(msg)
        return msg

    async def react(self, user: User, message: Message | int, emoji: str) -> None:
        self._set_reaction(message, user, emoji, True)

    async def unreact(self, user: User, message: Message | int, emoji: str) -> None:
        self._set_reaction(message, user, emoji, False)

    def _set_reaction(self, msg: Message | int, user: User, emoji: str, add: bool) -> None:
        msg, key = msg if isinstance(msg, Message) else self.message(msg), emoji_key(emoji)
        users = msg.reactions.setdefault(key, [])
        if (user.id in users) == add:
            return
        users.append(user.id) if add else users.remove(user.id)
        guild = msg.channel.guild
        data = {"user_id": str(user.id), "channel_id": str(msg.channel.id), "message_id": str(msg.id),
                "guild_id": str(guild.id), "emoji": emoji_payload(key), "type": 0, "burst": False}
        if add:
            data |= {"message_author_id": str(msg.author.id), "burst_colors": []}
            if user.id in guild.members:
                data["member"] = guild.members[user.id].payload()
        self._dispatch("MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE", data)

    def command(self, name: str, guild: Guild | None = None, type: int = 1) -> dict:
        """A synced command by name (guild commands shadow global ones); LookupError if the bot did not sync it."""
        for gid in (guild.id if guild else None, None):
            for cmd in self.commands.get(gid, []):
                if cmd["name"] == name and cmd.get("type", 1) == type:
                    return cmd
        raise LookupError(f"command {name!r} (type {type}) was not synced; synced: "
                          f"{[(c['name'], c.get('type', 1)) for cs in self.commands.values() for c in cs]}")

    async def slash(self, user: User, channel: Channel, name: str, options: dict[str, Any] | None = None, *,
                    attachments: list = (), _focused: str | None = None) -> Interaction:
        """Invoke "/command [group] [subcommand]" with options {name: value}: str/int/float/bool, User, Role,
        Channel, or an attachment as (filename, bytes[, content type]); `attachments` fill the attachment options
        not named in `options`, in declaration order. Types come from the synced command."""
        root, *path = name.split()
        cmd = self.command(root, channel.guild)
        schema, chain = cmd.get("options", []), []
        for part in path:
            sub = next((o for o in schema if o["name"] == part and o["type"] in (1, 2)), None)
            if sub is None:
                raise LookupError(f"{cmd['name']!r} has no subcommand {part!r}")
            chain.append(sub)
            schema = sub.get("options", [])
        if any(o["type"] in (1, 2) for o in schema):
            raise ValueError(f"{name!r} is a group: name one of its subcommands")
        resolved: dict[str, dict] = {}
        opts = self._options(channel, schema, dict(options or {}), list(attachments), _focused, resolved)
        for sub in reversed(chain):
            opts = [{"name": sub["name"], "type": sub["type"], "options": opts}]
        data = {"id": cmd["id"], "name": cmd["name"], "type": 1, "options": opts}
        if resolved:
            data["resolved"] = resolved
        if "guild_id" in cmd:
            data["guild_id"] = cmd["guild_id"]
        return self._interact(4 if _focused else 2, user, channel, data)

    async def autocomplete(self, user: User, channel: Channel, name: str, options: dict[str, Any] | None = None, *,
                           focused: str, timeout: float = 10.0) -> list[dict]:
        """Send an autocomplete interaction with `focused` being typed (its value from `options`, else "");
        return the choices the bot answered."""
        options = {focused: "", **(options or {})}
        ix = await self.slash(user, channel, name, options, _focused=focused)
        callback = await ix.wait_response(timeout)
        if callback["type"] != 8:
            raise AssertionError(f"expected an autocomplete result, got {callback}")
        return callback["data"]["choices"]

    async def context_menu(self, user: User, channel: Channel, name: str, target: Message | User) -> Interaction:
        is_message = isinstance(target, Message)
        cmd = self.command(name, channel.guild, type=3 if is_message else 2)
        if is_message:
            resolved = {"messages": {str(target.id): target.payload(self.bot_user.id)}}
        else:
            resolved = {}
            self._option_value(channel, 6, target, resolved, False)
        data = {"id": cmd["id"], "name": cmd["name"], "type": cmd["type"], "target_id": str(target.id),
                "resolved": resolved, **({"guild_id": cmd["guild_id"]} if "guild_id" in cmd else {})}
        return self._interact(2, user, channel, data)

    async def click(self, user: User, message: Message, custom_id: str, values: list[str] | None = None
                    ) -> Interaction:
        """Press the button `custom_id` on `message` (or choose `values` in that select menu)."""
        def find(components: list[dict]) -> dict | None:
            for c in components:
                hit = c if c.get("custom_id") == custom_id else find(c.get("components", []))
                if hit:
                    return hit
        component = find(message.components)
        if component is None:
            raise LookupError(f"message {message.id} has no component {custom_id!r}")
        data = {"custom_id": custom_id, "component_type": component["type"]}
        return self._interact(3, user, message.channel, data | ({"values": values} if values is not None else {}),
                              message)

    def _options(self, channel, schema, given, pending, focused, resolved) -> list[dict]:
        out = []
        for opt in schema:
            name, kind = opt["name"], opt["type"]
            if name not in given and kind == 11 and pending:
                given[name] = pending.pop(0)
            if name not in given:
                if opt.get("required") and not focused:
                    raise ValueError(f"missing required option {name!r}")
                continue
            item = {"name": name, "type": kind,
                    "value": self._option_value(channel, kind, given.pop(name), resolved, name == focused)}
            out.append(item | ({"focused": True} if name == focused else {}))
        if given or pending:
            raise ValueError(f"options the command does not take: {sorted(given)} {len(pending)} attachment(s)")
        return out

    def _option_value(self, channel: Channel, kind: int, value: Any, resolved: dict, focused: bool) -> Any:
        if focused or kind == 3:
            return str(value)
        if kind in (4, 5, 10):
            return {4: int, 5: bool, 10: float}[kind](value)
        guild = channel.guild
        if kind in (6, 9) and isinstance(value, (User, Member)):
            user = value.user if isinstance(value, Member) else value
            resolved.setdefault("users", {})[str(user.id)] = user.payload()
            if user.id in guild.members:
                member = guild.members[user.id]
                resolved.setdefault("members", {})[str(user.id)] = member.payload(False) | {
                    "permissions": str(member.permissions)}
            return str(user.id)
        if kind in (8, 9) and isinstance(value, Role):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return str(value.id)
        if kind == 7 and isinstance(value, Channel):
            resolved.setdefault("channels", {})[str(value.id)] = value.payload() | {"permissions": str(ALL_PERMISSIONS)}
            return str(value.id)
        if kind == 11:
            att = self._upload(channel, value)
            resolved.setdefault("attachments", {})[str(att.id)] = att.payload()
            return str(att.id)
        raise TypeError(f"cannot pass {value!r} as an option of type {kind}")

    def _interact(self, kind: int, user: User, channel: Channel, data: dict, target: Message | None = None
                  ) -> Interaction:
        if self._session_id is None:
            raise RuntimeError("no bot is connected to the gateway")
        guild = channel.guild
        if user.id not in guild.members:
            raise ValueError(f"{user.name} is not a member of {guild.name}")
        member = guild.members[user.id]
        ix = Interaction(self, self.snowflake(), f"aW50{secrets.token_urlsafe(32)}", kind, user, channel, target)
        ix.payload = {
            "id": str(ix.id), "application_id": str(self.app_id), "type": kind, "data": data, "token": ix.token,
            "version": 1, "guild_id": str(guild.id), "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
            "channel_id": str(channel.id), "channel": channel.payload() | {"permissions": str(member.permissions)},
            "member": member.payload() | {"permissions": str(member.permissions)},
            "app_permissions": str(guild.members[self.bot_user.id].permissions), "locale": "en-US",
            "guild_locale": "en-US", "entitlements": [], "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0, "attachment_size_limit": 10 * 1024 * 1024}
        if target is not None:
            ix.payload["message"] = target.payload(self.bot_user.id)
        self.interactions.append(ix)
        self._dispatch("INTERACTION_CREATE", ix.payload)
        return ix

    # ---- gateway
    def _dispatch(self, event: str, data: dict | Callable[[], dict]) -> None:
        """Send a dispatch in the current session (none before IDENTIFY); kept for replay on RESUME. A callable
        `data` is only built when the event goes out."""
        need = INTENTS.get(event, 0)
        if self._session_id is None or need and not (self.identify or {}).get("intents", 0) & need:
            return self._changed()
        self._seq += 1
        frame = {"op": 0, "t": event, "s": self._seq, "d": data() if callable(data) else data}
        self._session_events.append(frame)
        self.gateway_events.append(frame)
        if self._conn is not None:
            self._conn.queue.put_nowait(frame)
        self._changed()

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = _Connection(ws, dict(request.query))
        self.connections.append(conn)
        writer = asyncio.create_task(self._writer(conn))
        conn.queue.put_nowait({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval}})
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                self.gateway_received.append(frame)
                self._changed()
                op, d = frame.get("op"), frame.get("d")
                if op == 1:
                    conn.queue.put_nowait({"op": 11})
                elif op in (2, 6) and d.get("token") != self.token:
                    await ws.close(code=4004, message=b"Authentication failed.")
                elif op == 2:
                    self._start_session(conn, d)
                elif op == 6 and d.get("session_id") == self._session_id:
                    self._conn, conn.sent_seq = conn, d.get("seq") or 0
                    for event in self._session_events:
                        if event["s"] > conn.sent_seq:
                            conn.queue.put_nowait(event)
                    self._dispatch("RESUMED", {})
                elif op == 6:
                    conn.queue.put_nowait({"op": 9, "d": False})
                elif op == 8:
                    guild = self.guilds[int(d["guild_id"])]
                    self._dispatch("GUILD_MEMBERS_CHUNK", {
                        "guild_id": str(guild.id), "members": [m.payload() for m in guild.members.values()],
                        "chunk_index": 0, "chunk_count": 1, "not_found": [], "nonce": d.get("nonce")})
        finally:
            writer.cancel()
            if self._conn is conn:
                self._conn = None
            self._changed()
        return ws

    def _start_session(self, conn: _Connection, identify: dict) -> None:
        self.identify, self._conn = identify, conn
        self._session_id, self._seq, self._session_events = secrets.token_hex(16), 0, []
        guilds = [g for g in self.guilds.values() if self.bot_user.id in g.members]
        self._dispatch("READY", lambda: {
            "v": 10, "user": self.bot_user.payload() | {"verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds], "session_id": self._session_id,
            "resume_gateway_url": self.gateway_url, "session_type": "normal", "private_channels": [],
            "relationships": [], "presences": [], "application": {"id": str(self.app_id), "flags": 1 << 15 | 1 << 19},
            **({"shard": identify["shard"]} if "shard" in identify else {})})
        for guild in guilds:
            self._dispatch("GUILD_CREATE", guild.payload)
        self._ready_seq = self._seq

    async def _writer(self, conn: _Connection) -> None:
        while True:
            frame = await conn.queue.get()
            await conn.ws.send_str(json.dumps(frame))
            conn.sent_seq = max(conn.sent_seq, frame.get("s") or 0)
            self._changed()

    def reconnect(self, timeout: float = 10.0) -> Awaitable[Any]:
        """Send RECONNECT (op 7) now; await the result to wait until the client RESUMEd on a new connection.
        Dispatches made before that are replayed to it."""
        old, resumes = self._conn, sum(f.get("op") == 6 for f in self.gateway_received)
        old.queue.put_nowait({"op": 7, "d": None})
        return self.wait_for(lambda: self._conn not in (None, old) and
                             sum(f.get("op") == 6 for f in self.gateway_received) > resumes, timeout)

    # ---- HTTP plumbing
    @staticmethod
    def _json(status: int, body: Any) -> web.Response:
        # discord.py only parses JSON when Content-Type is exactly "application/json" (no charset)
        return web.Response(status=status, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})

    async def _http(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["tail"]
        api = re.match(r"api/v\d+(/.*)", path)
        record = Request(request.method, api[1] if api else "/" + path, dict(request.query))
        self.requests.append(record)
        try:
            record.json, record.files = await self._body(request)
            if not api:
                m = re.fullmatch(r"attachments/\d+/(\d+)/[^/]+", path)
                if request.method != "GET" or not m or int(m[1]) not in self._files:
                    raise DiscordError(404, 0, "404: Not Found")
                record.route, record.status = "/attachments/{cid}/{aid}/{filename}", 200
                att = self._files[int(m[1])]
                return web.Response(body=att.data, content_type=att.content_type or "application/octet-stream")
            for method, pattern, regex, handler in self.ROUTES:
                m = regex.fullmatch(record.path)
                if m and method == request.method:
                    record.route = pattern
                    break
            else:
                raise DiscordError(404, 0, "404: Not Found")
            authorized = request.headers.get("Authorization") == f"Bot {self.token}"
            if not authorized and not record.path.startswith(("/webhooks/", "/interactions/")):
                raise DiscordError(401, 0, "401: Unauthorized")
            result = await getattr(self, handler)(record, **m.groupdict())
            status, body = result if isinstance(result, tuple) else (200 if result is not None else 204, result)
        except DiscordError as e:
            status, body = e.status, {"message": e.message, "code": e.code}
        except Exception as e:  # noqa: BLE001 - a payload the fake did not expect: 400, as a 500 makes discord.py retry
            record.error = f"{type(e).__name__}: {e}"
            status, body = 400, {"message": f"Invalid Form Body ({record.error})", "code": 50035}
        record.status = status
        self._changed()
        return web.Response(status=204) if status == 204 else self._json(status, body)

    @staticmethod
    async def _body(request: web.Request) -> tuple[Any, list[Upload]]:
        if request.content_type == "multipart/form-data":
            form, files = await request.post(), []
            for name, value in form.items():
                if isinstance(value, web.FileField):
                    files.append(Upload(value.filename, value.file.read(), value.content_type, name))
            return json.loads(form.get("payload_json") or "{}"), files
        raw = await request.read()
        return (json.loads(raw) if raw and request.content_type == "application/json" else None), []

    def _get(self, table: dict, key: str, code: int, what: str) -> Any:
        try:
            return table[int(key)]
        except (KeyError, ValueError):
            raise DiscordError(404, code, f"Unknown {what}") from None

    def _channel_message(self, cid: str, mid: str) -> Message:
        channel = self._get(self.channels, cid, 10003, "Channel")
        msg = self._get(self._messages, mid, 10008, "Message")
        if msg.channel is not channel or msg.deleted or msg.ephemeral:
            raise DiscordError(404, 10008, "Unknown Message")
        return msg

    # ---- messages (shared by channel, interaction and webhook routes)
    def _attachments(self, channel: Channel, body: dict, files: list[Upload], existing: list[Attachment] = ()):
        """The message's attachments after this request, or None when it leaves them unchanged."""
        by_index = {int(re.sub(r"\D", "", f.field) or n): f for n, f in enumerate(files)}
        if "attachments" not in body:
            return [self._upload(channel, f) for f in files] if files else None
        old, out = {a.id: a for a in existing}, []
        for entry in body["attachments"] or []:
            aid = int(entry["id"])
            if aid in old:
                out.append(old[aid])
            elif aid in by_index:
                out.append(self._upload(channel, by_index[aid], entry.get("description")))
        return out

    @staticmethod
    def _embeds(embeds: list[dict], attachments: list[Attachment]) -> list[dict]:
        """Embeds as Discord stores them: refused (400, 50035) beyond Discord's limits, and each `attachment://name`
        image or thumbnail pointing at the message's file of that name, by its CDN URL. A name the message has no
        file for is refused here (Discord leaves the picture out), so a test sees the mistake."""
        try:
            validate_embeds(embeds)
        except ComponentValidationError as exc:
            raise DiscordError(400, 50035, f"Invalid Form Body: {exc}") from None
        by_name = {a.filename: a for a in attachments}
        out = copy.deepcopy(embeds)
        for n, embed in enumerate(out):
            for key in ("image", "thumbnail"):
                media = embed.get(key) or {}
                url = str(media.get("url") or "")
                if not url.startswith("attachment://"):
                    continue
                found = by_name.get(url.removeprefix("attachment://"))
                if found is None:
                    raise DiscordError(400, 50035, f"Invalid Form Body: embeds[{n}].{key}.url: {url} names no file "
                                                   "of this message")
                media.update(url=found.url, proxy_url=found.url, width=found.width, height=found.height,
                             content_type=found.content_type)
        return out

    def _new_message(self, channel: Channel, body: dict, files: list[Upload], interaction: Interaction | None = None,
                     flags: int | None = None) -> Message:
        ref = body.get("message_reference")
        kind = (20 if interaction.payload["data"].get("type", 1) == 1 else 23) if interaction else 19 if ref else 0
        attachments = self._attachments(channel, body, files) or []
        msg = Message(self.snowflake(), channel, self.bot_user, body.get("content") or "",
                      self._embeds(body.get("embeds") or [], attachments),
                      flags=int(body.get("flags") or 0) if flags is None else flags,
                      components=body.get("components") or [], interaction=interaction, type=kind,
                      reference={k: str(ref[k]) for k in ("message_id", "channel_id", "guild_id") if k in ref}
                      if ref else None)
        msg.attachments = attachments
        msg.mentions = self._mentions(msg.content)
        self._messages[msg.id] = msg
        self._publish(msg)
        return msg

    def _edit(self, msg: Message, body: dict, files: list[Upload]) -> Message:
        was_loading = msg.loading
        if len(body.get("content") or "") > 2000:
            raise DiscordError(400, 50035, "Invalid Form Body: content: Must be 2000 or fewer in length.")
        attachments = self._attachments(msg.channel, body, files, msg.attachments)
        attachments = msg.attachments if attachments is None else attachments
        embeds = self._embeds(body.get("embeds") or [], attachments) if "embeds" in body else msg.embeds
        msg.content = body.get("content") or "" if "content" in body else msg.content
        msg.embeds = embeds
        msg.components = body.get("components") or [] if "components" in body else msg.components
        keep = msg.flags & EPHEMERAL
        msg.flags = keep | (int(body.get("flags") or 0) if "flags" in body else msg.flags) & ~(EPHEMERAL | LOADING)
        msg.attachments = attachments
        msg.mentions = self._mentions(msg.content)
        msg.edited_timestamp = None if was_loading else iso()
        self._publish(msg, "MESSAGE_UPDATE")
        return msg

    def _delete(self, msg: Message) -> None:
        msg.deleted = True
        if not msg.ephemeral:
            self._dispatch("MESSAGE_DELETE", lambda: {"id": str(msg.id), "channel_id": str(msg.channel.id),
                                                      "guild_id": str(msg.channel.guild.id)})

    # ---- REST handlers
    async def _me(self, r: Request) -> dict:
        return self.bot_user.payload() | {"verified": True, "mfa_enabled": False, "flags": 0, "email": None}

    async def _get_user(self, r: Request, uid: str) -> dict:
        return self._get(self.users, uid, 10013, "User").payload()

    async def _gateway_info(self, r: Request) -> dict:
        return {"url": self.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}}

    async def _application(self, r: Request) -> dict:
        return {"id": str(self.app_id), "name": self.bot_user.name, "description": "", "icon": None,
                "bot_public": True, "bot_require_code_grant": False, "owner": self.owner.payload(), "team": None,
                "verify_key": "0" * 64, "flags": 1 << 15 | 1 << 19, "bot": self.bot_user.payload(),
                "interactions_endpoint_url": None, "redirect_uris": [], "summary": "", "tags": []}

    def _check_app(self, app: str) -> None:
        if app != str(self.app_id):
            raise DiscordError(404, 10002, "Unknown Application")

    async def _get_commands(self, r: Request, app: str, gid: str | None = None) -> list:
        self._check_app(app)
        return self.commands.get(int(gid) if gid else None, [])

    async def _put_commands(self, r: Request, app: str, gid: str | None = None) -> list:
        self._check_app(app)
        key = self._get(self.guilds, gid, 10004, "Guild").id if gid else None
        ids = {(c["name"], c["type"]): c["id"] for c in self.commands.get(key, [])}  # Discord keeps ids on overwrite
        synced = []
        for cmd in r.json:
            cmd = {"type": 1, "description": "", "default_member_permissions": None, "nsfw": False, **cmd}
            cmd |= {"id": ids.get((cmd["name"], cmd["type"])) or str(self.snowflake()),
                    "application_id": str(self.app_id), "version": str(self.snowflake())}
            synced.append(cmd | ({"guild_id": str(key)} if key else {}))
        self.commands[key] = synced
        return synced

    def _interaction(self, token: str, app: str | None = None) -> Interaction:
        ix = next((i for i in self.interactions if i.token == token), None)
        if ix is None or (app is not None and app != str(self.app_id)):
            raise DiscordError(404, 10015, "Unknown Webhook")
        return ix

    async def _callback(self, r: Request, iid: str, token: str) -> Any:
        ix = self._interaction(token)
        if str(ix.id) != iid:
            raise DiscordError(404, 10062, "Unknown interaction")
        if ix.callback is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        kind, data = r.json["type"], r.json.get("data") or {}
        if kind in (6, 7) and ix.target is None:
            raise DiscordError(400, 50035, "Invalid Form Body: no message to update for this interaction")
        ix.callback, ix.callback_files = r.json, r.files
        if kind in (6, 7):
            ix.original = ix.target if kind == 6 else self._edit(ix.target, data, r.files)
        elif kind == 4:
            ix.original = self._new_message(ix.channel, data, r.files, ix)
        elif kind == 5:
            ix.original = self._new_message(ix.channel, {}, [], ix, LOADING | int(data.get("flags") or 0) & EPHEMERAL)
        if r.query.get("with_response") not in ("1", "true", "True"):
            return None
        msg = ix.original
        resource = {"type": kind} | ({"message": msg.payload(self.bot_user.id)} if msg else {})
        return {"interaction": {"id": str(ix.id), "type": ix.type, "response_message_id": str(msg.id) if msg else None,
                                "response_message_loading": kind == 5, "response_message_ephemeral": bool(
                                    msg and msg.ephemeral)}, "resource": resource}

    def _webhook_message(self, token: str, app: str, mid: str) -> Message:
        ix = self._interaction(token, app)
        msg = ix.original if mid == "@original" else next((m for m in ix.followups if str(m.id) == mid), None)
        if msg is None or msg.deleted:
            raise DiscordError(404, 10008, "Unknown Message")
        return msg

    async def _followup(self, r: Request, app: str, token: str) -> Any:
        ix = self._interaction(token, app)
        if ix.callback is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        if ix.original is not None and ix.original.loading and not ix.original.deleted:
            msg = self._edit(ix.original, r.json or {}, r.files)  # the first followup after a defer fills it in
        else:
            msg = self._new_message(ix.channel, r.json or {}, r.files, ix)
            ix.followups.append(msg)
        return msg.payload(self.bot_user.id) if r.query.get("wait") in ("1", "true", "True") else None

    async def _webhook_get(self, r: Request, app: str, token: str, mid: str) -> dict:
        return self._webhook_message(token, app, mid).payload(self.bot_user.id)

    async def _webhook_edit(self, r: Request, app: str, token: str, mid: str) -> dict:
        return self._edit(self._webhook_message(token, app, mid), r.json or {}, r.files).payload(self.bot_user.id)

    async def _webhook_delete(self, r: Request, app: str, token: str, mid: str) -> None:
        self._delete(self._webhook_message(token, app, mid))

    async def _get_member(self, r: Request, gid: str, uid: str) -> dict:
        return self._get(self._get(self.guilds, gid, 10004, "Guild").members, uid, 10007, "Member").payload()

    async def _get_channel(self, r: Request, cid: str) -> dict:
        return self._get(self.channels, cid, 10003, "Channel").payload()

    async def _typing(self, r: Request, cid: str) -> None:
        self._get(self.channels, cid, 10003, "Channel")

    async def _history(self, r: Request, cid: str) -> list:
        msgs = [m for m in self.messages(self._get(self.channels, cid, 10003, "Channel")) if not m.ephemeral]
        limit = min(int(r.query.get("limit", 50)), 100)
        if "after" in r.query:  # ("around" is not supported)
            msgs = [m for m in msgs if m.id > int(r.query["after"])][:limit]
        else:
            msgs = [m for m in msgs if m.id < int(r.query.get("before", 1 << 64))][-limit:]
        return [m.payload(self.bot_user.id) for m in reversed(msgs)]  # newest first, as Discord does

    async def _create_message(self, r: Request, cid: str) -> dict:
        channel, body = self._get(self.channels, cid, 10003, "Channel"), r.json or {}
        components_v2 = int(body.get("flags") or 0) & (1 << 15)
        if not (r.files or components_v2 or any(body.get(k) for k in ("content", "embeds", "sticker_ids", "poll"))):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        return self._new_message(channel, body, r.files).payload(self.bot_user.id)

    async def _get_message(self, r: Request, cid: str, mid: str) -> dict:
        return self._channel_message(cid, mid).payload(self.bot_user.id)

    async def _edit_message(self, r: Request, cid: str, mid: str) -> dict:
        msg = self._channel_message(cid, mid)
        if msg.author is not self.bot_user:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        return self._edit(msg, r.json or {}, r.files).payload(self.bot_user.id)

    async def _delete_message(self, r: Request, cid: str, mid: str) -> None:
        self._delete(self._channel_message(cid, mid))

    async def _add_reaction(self, r: Request, cid: str, mid: str, emoji: str) -> None:
        self._set_reaction(self._channel_message(cid, mid), self.bot_user, emoji, True)

    async def _remove_reaction(self, r: Request, cid: str, mid: str, emoji: str, uid: str) -> None:
        user = self.bot_user if uid == "@me" else self._get(self.users, uid, 10013, "User")
        self._set_reaction(self._channel_message(cid, mid), user, emoji, False)

    async def _start_thread(self, r: Request, cid: str, mid: str) -> dict:
        """A public thread on a message: as on Discord, the thread's id is the message's id."""
        msg = self._channel_message(cid, mid)
        if msg.channel.is_thread:
            raise DiscordError(400, 50024, "Cannot execute action on this channel type")
        if any(c.id == msg.id for c in self.channels.values()):
            raise DiscordError(400, 160004, "A thread has already been created for this message")
        body = r.json or {}
        name = str(body.get("name") or "")
        if not 1 <= len(name) <= 100:
            raise DiscordError(400, 50035, "Invalid Form Body: name must be 1-100 characters")
        thread = Channel(msg.id, msg.channel.guild, name, 11, parent=msg.channel, owner_id=self.bot_user.id,
                         auto_archive_duration=int(body.get("auto_archive_duration") or 1440))
        msg.channel.guild.channels.append(thread)
        self.channels[thread.id] = thread
        self._dispatch("THREAD_CREATE", lambda: thread.payload() | {"newly_created": True})
        return thread.payload()

    async def _reaction_users(self, r: Request, cid: str, mid: str, emoji: str) -> list:
        ids = sorted(self._channel_message(cid, mid).reactions.get(emoji_key(emoji), []))
        after, limit = int(r.query.get("after", 0)), min(int(r.query.get("limit", 25)), 100)
        return [self.users[i].payload() for i in ids if i > after][:limit]
