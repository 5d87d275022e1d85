"""The imgcls command, end to end on generated photos."""
from __future__ import annotations


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


def test_download_then_credits_from_the_command_line(tmp_path, capsys, monkeypatch):
    from tests.fakes.search_api import SearchState
    from tests.fakes.threaded import running_servers

    data = str(tmp_path / "data")
    state = SearchState(results={"openverse": 3, "wikimedia": 40})  # Openverse runs short: Wikimedia fills in
    with running_servers(state) as servers:
        monkeypatch.setenv("OPENVERSE_URL", servers.search)
        monkeypatch.setenv("WIKIMEDIA_URL", servers.search + "/w/api.php")
        monkeypatch.setenv("DOWNLOAD_ALLOW", "127.0.0.1")
        run(capsys, "--data-dir", data, "init", "flowers", "--labels", "red roses, lavender")
        code, out, err = run(capsys, "--data-dir", data, "download", "flowers", "--per-label", "5",
                             "--sources", "openverse,wikimedia", "--jobs", "1")
        assert code == 0, err
        assert "red roses" in out and "lavender" in out
        code, out, _ = run(capsys, "--data-dir", data, "images", "flowers")
        assert [line.split()[-1] for line in out.splitlines()[1:3]] == ["5", "5"]
        code, out, _ = run(capsys, "--data-dir", data, "credits", "flowers")
        lines = out.strip().splitlines()
        assert len(lines) == 10
        assert sum("is licensed under CC" in line for line in lines) == 6  # 3 per label from Openverse
        assert sum("via Wikimedia Commons" in line for line in lines) == 4
        fetched = servers.stats.total
        search_calls = len(state.requests)
        # a second run: the labels are full, nothing is searched or fetched again
        code, out, _ = run(capsys, "--data-dir", data, "download", "flowers", "--per-label", "5", "--jobs", "1")
        assert code == 0 and servers.stats.total == fetched and len(state.requests) == search_calls


def test_download_refuses_unknown_sources(tmp_path, capsys):
    data = str(tmp_path / "data")
    run(capsys, "--data-dir", data, "init", "w", "--labels", "a,b")
    code, _, err = run(capsys, "--data-dir", data, "download", "w", "--per-label", "5", "--sources", "bing")
    assert code == 2 and "bing" in err and "openverse" in err


def test_suspects_lists_the_images_most_likely_wrong(tmp_path, capsys):
    data = str(tmp_path / "data")
    photos = write_image_folders(tmp_path / "photos", per_label=10, size=64, labels=("circles", "squares"))
    run(capsys, "--data-dir", data, "init", "shapes", "--labels", "circles, squares")
    run(capsys, "--data-dir", data, "add-folder", "shapes", str(photos), "--jobs", "1")
    code, out, err = run(capsys, "--data-dir", data, "suspects", "shapes")
    assert code == 2 and "train one first" in err
    run(capsys, "--data-dir", data, "relabel", "shapes", "3", "squares")  # a circle, now labelled squares
    code, out, _ = run(capsys, "--data-dir", data, "train", "shapes", "--epochs", "1", "--size", "64", "--bs", "8",
                       "--suspects", "embed")
    assert code == 0, out
    code, out, _ = run(capsys, "--data-dir", data, "suspects", "shapes", "--count", "3")
    assert code == 0 and "Run 1 checked 20 images (embed" in out
    rows = [line.split() for line in out.splitlines()[2:] if line.strip() and line.split()[0].isdigit()]
    assert rows and len(rows) <= 3 and rows[0][0] == "1"
    assert any(r[1] == "3" and "labelled squares; the model is" in line
               for r, line in zip(rows, out.splitlines()[2:])), out
    code, out, _ = run(capsys, "--data-dir", data, "suspects", "shapes", "--count", "500")
    assert "(asked for 500; only" in out
