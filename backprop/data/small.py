"""Small datasets that need no download: the bundled 8x8 digits (and patches of them) and the two spirals."""

from __future__ import annotations

import gzip
import math
from importlib import resources

import numpy as np

from backprop.errors import ConfigError


def digits(split: str = "train", test_fraction: float = 0.2):
    """The UCI optical digits (1,797 images of 8x8 pixels), bundled with backprop.

    Returns (images (N, 64) float32 in [0, 1], labels (N,) int64). The split is fixed: the same
    seeded permutation every time. Data: E. Alpaydin and C. Kaynak, "Optical Recognition of
    Handwritten Digits", UCI Machine Learning Repository (CC BY 4.0); see DIGITS-LICENSE.txt.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    with resources.files("backprop.data").joinpath("digits.csv.gz").open("rb") as raw:
        table = np.loadtxt(gzip.open(raw, "rt"), delimiter=",", dtype=np.float32)
    order = np.random.default_rng(0).permutation(len(table))
    n_test = math.ceil(len(table) * test_fraction)
    rows = order[n_test:] if split == "train" else order[:n_test]
    return table[rows, :64] / 16.0, table[rows, 64].astype(np.int64)


def patches(m: int = 10_000, seed: int = 0):
    """m patches of 8x8 for a sparse autoencoder (the UFLDL tutorial's setting): the bundled digits,
    resampled with noise, scaled into [0.1, 0.9]; float64 rows of 64 values."""
    images, _ = digits("train")
    rng = np.random.default_rng(seed)
    chosen = images[rng.integers(0, len(images), m)].astype(np.float64)
    chosen = np.clip(chosen + rng.normal(0, 0.05, chosen.shape), 0, 1)
    return 0.1 + 0.8 * chosen


def spirals(n_per_class: int = 200, turns: float = 1.5, noise: float = 0.1, seed: int = 0):
    """Two interleaved spirals in the plane: (points (2n, 2) float32, labels (2n,) int64 in {0, 1})."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0, 1, n_per_class)) * turns * 2 * math.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (turns * 2 * math.pi)
    points = np.concatenate([arm, -arm]) + rng.normal(0, noise / 5, (2 * n_per_class, 2))
    labels = np.repeat(np.array([0, 1]), n_per_class)
    return points.astype(np.float32), labels.astype(np.int64)
