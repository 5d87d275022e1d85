"""The imgcls command, end to end on generated photos."""
from __future__ import annotations

import pytest

from imgcls.cli import bar, main

from ..conftest import jpeg_bytes, make_image, write_image_folders


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_whole_workshop_from_the_command_line(tmp_path, capsys):
    data = str(tmp_path / "data")
    photos = write_image_folders(tmp_path / "photos", per_label=8, size=64, labels=("circles", "squares"))
    (photos / "circles" / "broken.jpg").write_bytes(b"<html>oops</html>")
    (photos / "squares" / "again.jpg").write_bytes((photos / "squares" / "000.jpg").read_bytes())

    code, out, _ = run(capsys, "--data-dir", data, "init", "shapes", "--labels", "Circles, squares")
    assert code == 0 and "Circles, squares" in out
    code, out, _ = run(capsys, "--data-dir", data, "add-folder", "shapes", str(photos), "--jobs", "1")
    assert code == 0 and "16 of 18 images stored" in out
    assert "not an image" in out and "exact duplicate" in out

    code, out, _ = run(capsys, "--data-dir", data, "train", "shapes", "--epochs", "1", "--size", "64", "--bs", "8")
    assert code == 0, out
    assert "epoch" in out and "frozen" in out and "Run 1 done" in out

    code, out, _ = run(capsys, "--data-dir", data, "results", "shapes", "--out", str(tmp_path / "res"))
    assert code == 0 and "Accuracy:" in out
    assert (tmp_path / "res" / "run1_confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "res" / "run1_top_losses.png").exists()

    (tmp_path / "q.jpg").write_bytes(jpeg_bytes(make_image("squares", 999, 64)))
    code, out, _ = run(capsys, "--data-dir", data, "predict", "shapes", str(tmp_path / "q.jpg"))
    assert code == 0 and "run 1" in out and ("squares" in out.splitlines()[0] or "Circles" in out.splitlines()[0])

    code, out, _ = run(capsys, "--data-dir", data, "delete", "shapes", "1", "--why", "blurry")
    assert code == 0 and "deleted" in out
    code, out, _ = run(capsys, "--data-dir", data, "relabel", "shapes", "2", "SQUARES")
    assert code == 0 and "relabelled to 'squares'" in out
    code, out, _ = run(capsys, "--data-dir", data, "undo", "shapes")
    code, out, _ = run(capsys, "--data-dir", data, "undo", "shapes")
    code, out, _ = run(capsys, "--data-dir", data, "images", "shapes")
    assert "Circles" in out and "8" in out
    code, out, _ = run(capsys, "--data-dir", data, "runs", "shapes")
    assert "run   1  done" in out


def test_errors_are_one_line_with_what_to_do(tmp_path, capsys):
    data = str(tmp_path / "data")
    code, _, err = run(capsys, "--data-dir", data, "images", "nope")
    assert code == 2 and "imgcls init nope" in err and "Traceback" not in err
    run(capsys, "--data-dir", data, "init", "w", "--labels", "a,b")
    code, _, err = run(capsys, "--data-dir", data, "train", "w")
    assert code == 2 and "at least 2 labels" in err
    code, _, err = run(capsys, "--data-dir", data, "relabel", "w", "1", "c")
    assert code == 2
    code, _, err = run(capsys, "--data-dir", data, "init", "x", "--labels", "a/b")
    assert code == 2 and "/" in err
    code, _, err = run(capsys, "--data-dir", data, "results", "w")
    assert code == 2 and "train one first" in err


def test_data_dir_comes_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "env-data"))
    code, _, _ = run(capsys, "init", "w", "--labels", "a,b")
    assert code == 0 and (tmp_path / "env-data" / "workshops.db").exists()


def test_progress_bar():
    assert bar(0, 10, width=10) == "[----------]  0/10"
    assert bar(5, 10, width=10) == "[#####-----]  5/10"
    assert bar(12, 10, width=10) == "[##########] 12/10"


def test_credits_list_every_active_image_that_needs_one(tmp_path, capsys):
    from imgcls.ingest import ingest
    from imgcls.store import Store
    from imgcls.types import ImageMeta

    data = tmp_path / "data"
    store = Store(data)
    ws = store.create_workshop("w", ["circles"])
    for seed, meta in [(1, ImageMeta(source="openverse", attribution='"C" by Ann, CC BY 2.0')),
                       (2, ImageMeta(source="upload", added_by="bo")),
                       (3, ImageMeta(source="ddg", source_url="https://x/3.jpg"))]:
        outcome = ingest(jpeg_bytes(make_image("circles", seed, 96)), store.images_dir)
        store.add_image(ws["id"], "circles", outcome, meta)
    store.close()
    code, out, _ = run(capsys, "--data-dir", str(data), "credits", "w")
    assert code == 0
    assert '"C" by Ann, CC BY 2.0' in out and "licence unknown, from https://x/3.jpg" in out
    assert len(out.strip().splitlines()) == 2
