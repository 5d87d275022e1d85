"""Workshop, labels and images commands under SimCord: permissions, ephemeral errors, autocomplete,
one workshop per channel, each server sees only its own."""
from __future__ import annotations

import pytest
import simcord
from simcord import SetupError

from imgcls.store import Store

from .conftest import photo


async def start(world, name="Flowers", labels="sunflowers, lavender, roses"):
    return await world.host.slash(world.channel, "workshop start", name=name, labels=labels)


async def test_host_starts_a_workshop_and_everyone_sees_its_status(world, settings):
    result = await start(world)
    assert not result.ephemeral and "Workshop **Flowers** started" in result.response.content
    assert "**lavender**" in result.response.content
    status = await world.alice.slash(world.channel, "workshop status")
    text = status.response.content
    assert "Flowers" in text and "sunflowers" in text and "No trained model yet" in text
    store = Store(settings.data_dir)
    ws = store.find_workshop(guild_id=world.guild.id, channel_id=world.channel.id)
    assert ws["host_id"] == world.host.id and store.labels(ws["id"]) == ["sunflowers", "lavender", "roses"]
    store.close()


async def test_participants_are_refused_host_commands_ephemerally(world):
    result = await world.alice.slash(world.channel, "workshop start", name="Mine", labels="a, b")
    assert result.ephemeral and "Only the workshop host" in result.response.content
    assert "Traceback" not in result.response.content
    # the host role from the settings is enough
    ok = await world.helper.slash(world.channel, "workshop start", name="Helpers", labels="a, b")
    assert "started" in ok.response.content and not ok.ephemeral


@pytest.mark.parametrize("settings", [{"host_role": ""}], indirect=True)
async def test_top_level_host_commands_are_hidden_by_default_permissions(world):
    await start(world)
    visible = world.alice.available_commands(world.channel)
    for name in ("train", "retrain", "export", "clean post", "clean apply"):
        assert name not in visible
        assert name in world.host.available_commands(world.channel)
    assert "predict" in visible and "workshop status" in visible
    with pytest.raises(SetupError):
        await world.alice.slash(world.channel, "train")


async def test_with_a_host_role_host_commands_stay_visible_and_are_checked_when_run(world):
    await start(world)
    assert "train" in world.alice.available_commands(world.channel)  # the role's members must see them
    refused = await world.alice.slash(world.channel, "train")
    assert refused.ephemeral and "Only the workshop host" in refused.response.content
    allowed = await world.helper.slash(world.channel, "train")  # passes the check; no images yet
    assert allowed.ephemeral and "Only the workshop host" not in allowed.response.content


async def test_one_workshop_per_channel_and_errors_say_what_to_do(world):
    await start(world)
    again = await start(world, name="Second")
    assert again.ephemeral and "already running in this channel" in again.response.content
    nothing = await world.alice.slash(world.other_channel, "workshop status")
    assert nothing.ephemeral and "/workshop start" in nothing.response.content


async def test_labels_add_remove_list_and_autocomplete(world):
    await start(world, labels="sunflowers, lavender")
    added = await world.host.slash(world.channel, "labels add", labels="roses, Tulips 🌷")
    assert "**roses**" in added.response.content and "**Tulips 🌷**" in added.response.content
    choices = await world.alice.autocomplete(world.channel, "labels remove", "label", "")
    assert [c["value"] for c in choices] == ["sunflowers", "lavender", "roses", "Tulips 🌷"]
    assert [c["value"] for c in await world.alice.autocomplete(world.channel, "images add", "label", "LAV")] == ["lavender"]
    assert await world.alice.autocomplete(world.other_channel, "images add", "label", "") == []
    await world.host.slash(world.channel, "labels remove", label="roses")
    listed = await world.alice.slash(world.channel, "labels list")
    assert listed.ephemeral and "roses" not in listed.response.content and "lavender" in listed.response.content
    dup = await world.host.slash(world.channel, "labels add", labels="LAVENDER")
    assert dup.ephemeral and "already in this workshop" in dup.response.content


async def test_each_server_sees_only_its_own_workshops(world):
    await start(world, labels="sunflowers, lavender")
    other = world.env.create_guild("Other school")
    channel = other.create_text_channel("workshop")
    member = other.add_member(world.env.create_user("dora"))
    assert await member.autocomplete(channel, "labels remove", "label", "") == []
    status = await member.slash(channel, "workshop status")
    assert status.ephemeral and "no workshop in this channel" in status.response.content


async def test_participants_add_photos_and_bad_files_are_refused_with_a_reason(world, settings):
    await start(world, labels="circles, squares")
    result = await world.alice.slash(world.channel, "images add", label="Circles", image=("mine.jpg", photo()),
                                     image2=("page.jpg", b"<html><body>not an image</body></html>"),
                                     image3=("same.jpg", photo()))
    text = result.response.content
    assert "`mine.jpg`: added as image" in text
    assert "`page.jpg`: refused: not an image" in text
    assert "`same.jpg`: refused: exact duplicate" in text
    store = Store(settings.data_dir)
    [image] = store.images(store.find_workshop(guild_id=world.guild.id, channel_id=world.channel.id)["id"])
    assert (image["label"], image["added_by"], image["source"]) == ("circles", str(world.alice.id), "upload")
    store.close()

    shown = await world.bob.slash(world.channel, "images show", label="circles")
    [png] = shown.response.attachments
    assert (await png.read()).startswith(b"\x89PNG")
    credits = await world.bob.slash(world.channel, "credits")
    assert "participants' own photos" in credits.response.content


async def test_reset_needs_the_name_and_archives_without_deleting(world, settings):
    await start(world)
    wrong = await world.host.slash(world.channel, "workshop reset", confirm="nope")
    assert wrong.ephemeral and "type its name exactly" in wrong.response.content
    done = await world.host.slash(world.channel, "workshop reset", confirm="flowers")
    assert "archived" in done.response.content
    store = Store(settings.data_dir)
    [ws] = store.workshops(guild_id=world.guild.id, include_archived=True)
    assert ws["status"] == "archived" and store.labels(ws["id"]) == ["sunflowers", "lavender", "roses"]
    store.close()
    assert "started" in (await start(world, name="Again")).response.content


async def test_an_unexpected_error_is_an_apology_not_a_traceback(world, monkeypatch, caplog):
    await start(world)
    from bot import render

    def broken(*a, **k):
        raise RuntimeError("internal detail 0xdeadbeef")

    monkeypatch.setattr(render, "counts_block", broken)
    result = await world.alice.slash(world.channel, "workshop status")
    assert result.ephemeral and result.response.content.startswith("Sorry, something went wrong")
    assert "0xdeadbeef" not in result.response.content
    assert "0xdeadbeef" in caplog.text  # logged with its traceback for the host
    assert all("0xdeadbeef" not in (m.content or "") for m in world.channel.history())


def test_simcord_is_the_version_built_for_discord_py_2_7():
    assert simcord.__version__.startswith("3.")
