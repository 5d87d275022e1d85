"""The guide's state machine on a real store: steps finish in order, each is announced once, an announcement
that never went out is made again, and early events do not end the workshop."""
from __future__ import annotations

from bot.guide import advance, load_guide, plan, posted, start, switch


def workshop(store):
    return store.create_workshop("Shapes", ["a", "b"], guild_id=1, channel_id=2)["id"]


def test_each_step_is_announced_once_and_only_after_its_message_went_out(store):
    guide, ws = load_guide(), workshop(store)
    assert start(store, ws, guide, True).key == "gather"
    news = advance(store, ws, "gather", guide)
    assert news.post.key == "look"
    # the message never went out (a crash, Discord refused it): the next event announces it again
    assert advance(store, ws, "gather", guide).post is None  # nothing new happened
    again = advance(store, ws, "look", guide)  # the next step finishes; "look" itself was done meanwhile
    assert again.post.key == "train"
    posted(store, ws, "train")
    assert advance(store, ws, "look", guide).post is None
    states = {s.key: st for s, st in plan(store.workshop(ws)["settings"], guide)}
    assert states["look"] == "done" and states["train"] == "next" and states["stump"] == "later"


def test_a_step_not_posted_yet_is_posted_by_the_next_event_that_leaves_it_next(store):
    guide, ws = load_guide(), workshop(store)
    start(store, ws, guide, True)
    news = advance(store, ws, "gather", guide)
    assert news.post.key == "look"  # ... but the send failed, so posted() was never called
    settings = store.workshop(ws)["settings"]
    assert "look" not in settings["posted"] and "gather" in settings["done"]
    assert advance(store, ws, "train", guide).post.key == "learn"  # training catches up: gather, look, train


def test_minor_events_count_only_in_order_so_an_early_stumper_does_not_end_the_workshop(store):
    guide, ws = load_guide(), workshop(store)
    start(store, ws, guide, True)
    for event in ("gather", "look", "train"):
        posted(store, ws, advance(store, ws, event, guide).post.key)
    assert advance(store, ws, "stump", guide).post is None  # found during step 4: counted later, not now
    assert advance(store, ws, "try", guide).post is None  # judging an answer before anyone pasted one
    assert advance(store, ws, "learn", guide).post.key == "try"
    posted(store, ws, "try")
    assert advance(store, ws, "retrain", guide).post.key == "stump"  # the main stages catch up
    posted(store, ws, "stump")
    end = advance(store, ws, "stump", guide)
    assert end.finished and end.post is None
    posted(store, ws, "finale")
    assert not advance(store, ws, "stump", guide).finished  # the finale once


def test_with_the_guide_off_steps_are_tracked_but_nothing_is_announced(store):
    guide, ws = load_guide(), workshop(store)
    start(store, ws, guide, False)
    assert advance(store, ws, "gather", guide).post is None
    assert switch(store, ws, True, guide).key == "look"
    assert advance(store, ws, "look", guide).post.key == "train"
    assert switch(store, ws, False, guide) is None and advance(store, ws, "train", guide).post is None
