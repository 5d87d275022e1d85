"""Prediction: same answer as Learner.predict, only verified models, cached between calls."""
from __future__ import annotations

import shutil

import pytest

from imgcls.errors import InvalidInput, ModelRefused
from imgcls.predict import Predictor, decode_image, load_verified

from ..conftest import jpeg_bytes, make_image


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


def _images(trained):
    """Validation images of the trained run plus fresh ones it never saw."""
    valid_ids = [i for i, is_valid in trained.run["snapshot"]["split"] if is_valid][:4]
    stored = [trained.store.image_path(trained.store.image(i)).read_bytes() for i in valid_ids]
    fresh = [jpeg_bytes(make_image(kind, seed=10_000 + k, size=150)) for k, kind in
             enumerate(("circles", "squares", "triangles"))]
    return stored + fresh


def test_fast_path_gives_the_same_answer_as_learner_predict(trained, predictor):
    run = trained.run
    learn = load_verified(run["model_path"], run["model_sha256"])
    for data in _images(trained):
        ours = predictor.predict(run["model_path"], run["model_sha256"], data, k=3, run_id=run["id"])
        label, _, probs = learn.predict(decode_image(data))
        assert ours.label == str(label)
        expected = {str(v): float(p) for v, p in zip(learn.dls.vocab, probs)}
        for name, p in ours.top:
            assert p == pytest.approx(expected[name], abs=1e-5)
        assert ours.run_id == run["id"]


def test_top_k_is_sorted_and_limited_to_the_labels(trained, predictor):
    run = trained.run
    pred = predictor.predict(run["model_path"], run["model_sha256"], jpeg_bytes(make_image("circles", 77)), k=10)
    probs = [p for _, p in pred.top]
    assert len(pred.top) == 3 and probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert pred.label == "circles"


def test_predicting_many_matches_predicting_one_at_a_time(trained, predictor):
    run = trained.run
    images = _images(trained)
    together = predictor.predict_many(run["model_path"], run["model_sha256"], images)
    alone = [predictor.predict(run["model_path"], run["model_sha256"], d) for d in images]
    for a, b in zip(together, alone):
        assert a.label == b.label and a.probability == pytest.approx(b.probability, abs=1e-5)


def test_the_model_is_loaded_once_and_cached(trained):
    run = trained.run
    p = Predictor()
    assert p.load(run["model_path"], run["model_sha256"]) is p.load(run["model_path"], run["model_sha256"])


def test_a_tampered_model_file_is_refused(trained, tmp_path):
    run = trained.run
    copy = tmp_path / "model.pkl"
    shutil.copy(run["model_path"], copy)
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    copy.write_bytes(bytes(raw))
    with pytest.raises(ModelRefused, match="changed since it was trained"):
        Predictor().load(str(copy), run["model_sha256"])


def test_a_missing_model_or_checksum_is_refused(trained, tmp_path):
    with pytest.raises(ModelRefused, match="missing"):
        Predictor().load(str(tmp_path / "gone.pkl"), trained.run["model_sha256"])
    with pytest.raises(ModelRefused, match="checksum"):
        Predictor().load(trained.run["model_path"], "")


@pytest.mark.parametrize("data", [b"", b"<html>not an image</html>", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_bad_image_bytes_are_refused_with_a_reason(trained, predictor, data):
    run = trained.run
    with pytest.raises(InvalidInput):
        predictor.predict(run["model_path"], run["model_sha256"], data)


def test_a_file_that_is_not_a_model_is_refused_even_with_a_matching_checksum(tmp_path):
    import hashlib

    junk = tmp_path / "model.pkl"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(ModelRefused, match="could not be loaded"):
        Predictor().load(str(junk), hashlib.sha256(junk.read_bytes()).hexdigest())


def test_asking_for_no_labels_is_refused(trained, predictor):
    run = trained.run
    with pytest.raises(InvalidInput, match="at least one"):
        predictor.predict(run["model_path"], run["model_sha256"], jpeg_bytes(make_image("circles", 5)), k=0)
