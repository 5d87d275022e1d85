"""A workshop trained once per test session (real lite0 fine_tune), shared by the train and predict tests."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgcls.collect import add_files, folder_files
from imgcls.jobs import ProcessJobExecutor
from imgcls.runs import RunParams, train_workshop
from imgcls.store import Store
from imgcls.types import ImageMeta, Progress

from ..conftest import write_image_folders

LABELS = ["circles", "squares", "triangles"]
PARAMS = RunParams(arch="lite0", epochs=3, size=128, bs=16, seed=42)


@dataclass
class Trained:
    store: Store
    workshop_id: int
    run: dict
    photos: Path
    events: list[Progress]
    seconds: float


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    photos = write_image_folders(root / "photos", per_label=30, size=128)
    store = Store(root / "data")
    ws = store.create_workshop("shapes", LABELS)
    add_files(store, ws["id"], folder_files(photos, LABELS), meta=ImageMeta(source="folder", added_by="tester"))
    events: list[Progress] = []
    started = time.monotonic()
    run = train_workshop(store, ws["id"], PARAMS, ProcessJobExecutor(), progress=events.append, timeout=300)
    seconds = time.monotonic() - started
    assert run["status"] == "done", run["error"]
    yield Trained(store, ws["id"], run, photos, events, seconds)
    store.close()
