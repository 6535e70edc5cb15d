"""The shipped digits data (``modelopt_demo/digits.npz``) and its split: the same arrays and
the same stratified split scikit-learn gave (sklearn itself is no longer a dependency)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from modelopt_demo.data import _digits, load_digits_data, stratified_split


def _sha(*arrays: np.ndarray) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


def test_shipped_digits_are_sklearns_arrays():
    images, labels = _digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.uint8
    assert int(images.max()) == 16 and int(images.min()) == 0
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # sha256 of sklearn.datasets.load_digits() images/target cast to uint8 (exact: 0..16 ints)
    assert _sha(images, labels) == ("87ff0c9e40dc7e2c0e34e7257799c2e3"
                                    "f3aec1a016363bb11cad869ec428a826")
    assert not images.flags.writeable  # the cached arrays are shared: nobody may edit them


@pytest.mark.parametrize("seed, digest, head", [
    (0, "afce47e935bc0e35", ([447, 836, 1749, 146, 1200], [1364, 1579, 1023, 1176, 1151])),
    (1, "9eacc026b4844076", ([534, 1704, 696, 1206, 819], [1225, 628, 608, 841, 550])),
])
def test_split_is_sklearns_stratified_train_test_split(seed, digest, head):
    """Recorded from ``train_test_split(range(1797), test_size=0.25, random_state=seed,
    stratify=target)`` of scikit-learn 1.9.1."""
    train, test = stratified_split(_digits()[1], 0.25, seed)
    assert _sha(train.astype(np.int64), test.astype(np.int64))[:16] == digest
    assert (train[:5].tolist(), test[:5].tolist()) == head


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9])
def test_split_is_stratified_disjoint_and_complete(fraction):
    labels = _digits()[1]
    train, test = stratified_split(labels, fraction, 3)
    assert len(test) == int(np.ceil(fraction * len(labels)))
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    share = np.bincount(labels[test], minlength=10) / np.bincount(labels)
    assert np.abs(share - fraction).max() < 0.02


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 0.001])
def test_bad_test_fraction_is_refused(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(_digits()[1], fraction, 0)


def test_load_digits_data_batches():
    d = load_digits_data(batch_size=64)
    assert sum(len(y) for _, y in d.train) == 1347 and sum(len(y) for _, y in d.test) == 450
    x, y = d.train[0]
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    again = load_digits_data(batch_size=64)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(d.train, again.train))


def test_digits_load_without_sklearn_or_scipy():
    code = ("import sys\n"
            "sys.modules['sklearn'] = None; sys.modules['scipy'] = None\n"
            "from modelopt_demo.data import image_batches, load_digits_data\n"
            "load_digits_data(); image_batches(1, size=16)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
