"""The automatic training recipe: backbone, image size and epochs for this dataset on this device, within a budget.

    recipe = choose(n_train=240, device="cpu", budget=300)
    recipe.arch, recipe.size, recipe.epochs, recipe.item_tfm, recipe.why
    # ('lite0', 192, 4, 'squish', 'lite0 at 192 px (whole pictures, squished), 1 warm-up + 4 epochs: ...')

Pure Python, no torch: the training job calls it once it knows its device (imgcls.train), and the
benchmark that chose the numbers below calls it too (bench/accuracy.py).

Where the numbers come from: `bench/accuracy.py` on Debian's openclipart-png (five categories,
about 240 training images, a held-out test set, 3 seeds). `CANDIDATES` lists, per device, the
configurations worth running, best first by the benchmark's test accuracy; the recipe takes the
first whose estimated training time fits the budget. `CPU_BASE_COST`, `ARCH_FACTOR` and
`SIZE_EXPONENT` are fitted to the measured wall time per training image and epoch on a 2-core
CPU; `CUDA_COST` is an estimate, not a measurement (the data loading on the CPU dominates there).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

#: Each epoch of the benchmark's best recipes took this many optimiser steps (240 images, batch 32)...
BENCH_STEPS_PER_EPOCH = 8
#: ... so a smaller dataset gets more epochs, up to this many, to see as many steps.
MAX_AUTO_EPOCHS = 10
MIN_AUTO_EPOCHS = 2
EPOCH_OVERHEAD_S = 1.0  # per epoch whatever the dataset: the learner's callbacks, the first batches' warm-up
SIZE_EXPONENT = 2.6  # cost grows with the size to this power (measured: 2.5-2.9 from 128 to 224 px)
FROZEN_EPOCH_SHARE = 0.6  # a frozen epoch costs about this share of an unfrozen one (no backward through the body)

#: (arch, size, unfrozen epochs at the benchmark's size, item transform), best first, per device.
#: CPU: the most accurate configuration that trained in at most the notebook recipe's time, then the most
#: accurate of the cheaper ones (test accuracy over 3 seeds; training time as a ratio to the notebook's):
#:   lite0 192 px squish 1+4: 0.677, 0.75x | lite1 128 px 1+4: 0.657, 0.39x | lite0 128 px 1+3: 0.633, 0.22x
#: CUDA: the most accurate whatever the time, as a GPU trains these in seconds (the accuracy was measured on
#: the CPU; it does not depend on the device): lite2 224 px 1+4: 0.690 (2 seeds), lite1 224 px 1+4: 0.670.
CANDIDATES: dict[str, tuple[tuple[str, int, int, str], ...]] = {
    "cpu": (
        ("lite0", 192, 4, "squish"),
        ("lite1", 128, 4, "resize"),
        ("lite0", 128, 3, "resize"),
    ),
    "cuda": (
        ("lite2", 224, 4, "resize"),
        ("lite1", 224, 4, "resize"),
        ("lite0", 192, 4, "squish"),
        ("lite0", 128, 3, "resize"),
    ),
}
#: How the line names each item transform.
TFM_WORDS = {"resize": "", "squish": " (whole pictures, squished)", "random_resized_crop": " (random crops)"}

#: Wall seconds per training image per unfrozen epoch (validation included), lite0 at 128 px, 2 CPU cores:
#: the median of bench/accuracy.py's runs (0.0219).
CPU_BASE_COST = 0.022
#: How much more an epoch costs than lite0 at the same size, per backbone (measured on the CPU: lite1 1.3-1.5x,
#: lite2 1.4-1.6x; the resnets are guesses).
ARCH_FACTOR = {"lite0": 1.0, "lite1": 1.45, "lite2": 1.5, "resnet18": 1.2, "resnet34": 2.0}
#: Per image and epoch on a GPU: decoding and resizing on the CPU dominate (an estimate, not a measurement).
CUDA_COST = 0.006
#: The CPU counts the costs were measured with.
BENCH_CPUS = 2


@dataclass(frozen=True)
class Recipe:
    arch: str
    size: int
    epochs: int
    freeze_epochs: int
    estimate_s: float  # the estimated fine_tune time
    why: str  # one line for the channel: what was chosen and why
    item_tfm: str = "resize"  # how each image is brought to the size (imgcls.train.ITEM_TFMS)


def host_cpus() -> int:
    """The CPU cores this process may use (a container's affinity, not the whole machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def epoch_cost(arch: str, size: int, device: str, cpus: Optional[int] = None) -> float:
    """Estimated wall seconds per training image per unfrozen epoch."""
    if device == "cuda":
        return CUDA_COST * ARCH_FACTOR.get(arch, 1.5) ** 0.5 * (size / 224) ** 2
    speedup = (max(1, cpus or host_cpus()) / BENCH_CPUS) ** 0.7  # intra-op threads scale well short of linearly
    return CPU_BASE_COST * ARCH_FACTOR.get(arch, 1.5) * (size / 128) ** SIZE_EXPONENT / speedup


def estimate(n_train: int, arch: str, size: int, epochs: int, freeze_epochs: int, device: str,
             cpus: Optional[int] = None) -> float:
    per_epoch = n_train * epoch_cost(arch, size, device, cpus) + EPOCH_OVERHEAD_S
    return per_epoch * (epochs + FROZEN_EPOCH_SHARE * freeze_epochs)


def scaled_epochs(base: int, n_train: int, bs: int, cap: int = MAX_AUTO_EPOCHS) -> int:
    """The benchmark's epochs, raised for a small dataset so it gets about as many optimiser steps."""
    steps = max(1, math.ceil(n_train / max(1, bs)))
    wanted = math.ceil(base * BENCH_STEPS_PER_EPOCH / steps)
    return max(1, min(max(base, min(MAX_AUTO_EPOCHS, wanted)), cap))


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{max(1, round(seconds))} s"


def choose(n_train: int, device: str, budget: float, *, bs: int = 32, arch: Optional[str] = None,
           size: Optional[int] = None, epochs: Optional[int] = None, freeze_epochs: int = 1,
           max_epochs: int = 100, cpus: Optional[int] = None) -> Recipe:
    """The first candidate for `device` whose estimated time for `n_train` images fits `budget` seconds.

    `arch`, `size` and `epochs` given by a host are kept, and the recipe fills in the rest. Epochs never go over
    `max_epochs` (the bot's MAX_EPOCHS). When nothing fits, the cheapest candidate is trimmed to
    `MIN_AUTO_EPOCHS`, and the line says it will take longer.
    """
    kind = "cuda" if device == "cuda" else "cpu"
    fixed = [name for name, value in (("backbone", arch), ("size", size), ("epochs", epochs)) if value]
    floor = min(MIN_AUTO_EPOCHS, max_epochs)
    options = []
    for c_arch, c_size, c_epochs, c_tfm in CANDIDATES[kind]:
        a, s = arch or c_arch, size or c_size
        e = epochs or scaled_epochs(c_epochs, n_train, bs, cap=max_epochs)
        if (a, s, e, c_tfm) not in options:
            options.append((a, s, e, c_tfm))
    where = "a GPU" if kind == "cuda" else f"{cpus or host_cpus()} CPU cores"
    images = f"{n_train} training images on {where}"
    if fixed:
        kept = " and ".join(fixed)
        best = f"with the {kept} you set, the rest as the clip-art benchmark found best"
        trimmed = f"with the {kept} you set, the rest trimmed to fit"
    else:
        best, trimmed = "the most accurate on the clip-art benchmark", "the most accurate recipe that fits"
    # the measured configurations first, each at its epochs; only then fewer epochs, best configuration first
    tries = [(rank, a, s, e, tfm) for rank, (a, s, e, tfm) in enumerate(options)]
    if not epochs:
        tries += [(rank, a, s, fewer, tfm) for rank, (a, s, e, tfm) in enumerate(options)
                  for fewer in (e - 1, e - 2) if fewer >= floor]
    for rank, a, s, e, tfm in tries:
        t = estimate(n_train, a, s, e, freeze_epochs, kind, cpus)
        if t <= budget:
            reason = best if rank == 0 and (epochs or e == options[0][2]) else trimmed
            more = " (more epochs for a small dataset)" if not epochs and e > CANDIDATES[kind][rank][2] else ""
            return Recipe(a, s, e, freeze_epochs, t,
                          f"{a} at {s} px{TFM_WORDS[tfm]}, {freeze_epochs} warm-up + {_epochs(e)}{more}: {reason}; "
                          f"{images}, about {_minutes(t)} of the {_minutes(budget)} budget.", tfm)
    a, s, e, tfm = options[-1]
    e = epochs or floor
    t = estimate(n_train, a, s, e, freeze_epochs, kind, cpus)
    return Recipe(a, s, e, freeze_epochs, t,
                  f"{a} at {s} px{TFM_WORDS[tfm]}, {freeze_epochs} warm-up + {_epochs(e)}: the quickest recipe"
                  + (f" with the {' and '.join(fixed)} you set" if fixed else "")
                  + f", but {images} need about {_minutes(t)}, over the {_minutes(budget)} budget.", tfm)
