"""scikit-learn's digits (1797 real 8x8 images shipped inside the wheel): the offline default dataset.

Values 0..16 are scaled to uint8, upsampled by pixel repetition to `img_size` and repeated to 3 channels,
so the set has the shape of CIFAR-10. A stratified, seeded subset of `digits_test` images is held out as
the test set; the rest is `train`, in the original order.
"""

from __future__ import annotations

import numpy as np

from ..params import DatasetParams
from .raw import RawDataset

_TEST_SEED = 0  # the train/test cut is part of the dataset definition, not an experiment seed


def images_uint8(raw: np.ndarray, img_size: int) -> np.ndarray:
    """N x 8 x 8 values in 0..16 -> N x img_size x img_size x 3 uint8."""
    x = np.rint(raw.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)
    k = img_size // 8
    x = x.repeat(k, axis=1).repeat(k, axis=2)
    return np.repeat(x[..., None], 3, axis=3)


def stratified_test_indices(labels: np.ndarray, n_test: int) -> np.ndarray:
    """A stratified selection: each class contributes in proportion to its size (largest remainders)."""
    rng = np.random.RandomState(_TEST_SEED)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_test / counts.sum()
    take = np.floor(quota).astype(int)
    for c in np.argsort(-(quota - take), kind="stable")[: n_test - take.sum()]:
        take[c] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:t] for c, t in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(picked))


def load(p: DatasetParams) -> RawDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    labels = d.target.astype(np.int64)
    images = images_uint8(d.images, p.img_size)
    is_test = np.zeros(len(labels), bool)
    is_test[stratified_test_indices(labels, p.digits_test)] = True
    return RawDataset(
        class_names=[str(i) for i in range(10)],
        subsets={
            "train": [(images[~is_test], labels[~is_test])],
            "test": [(images[is_test], labels[is_test])],
        },
        meta={"upstream": "sklearn.datasets.load_digits", "digits_test": p.digits_test},
    )
