"""The CMU-MOSI / IEMOCAP aligned-feature pickle: what it reads, and how bad files fail."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cggm_seg.apps.multiview.aligned import (
    load_aligned_features,
    synthetic_aligned_features,
    write_aligned_features,
)
from cggm_seg.apps.multiview.views import load_views


@pytest.fixture
def mosi():
    return synthetic_aligned_features("mosi", samples={"train": 20, "valid": 6, "test": 6}, steps=5)


def write(tmp_path, splits, name="data.pkl"):
    return write_aligned_features(tmp_path / name, splits)


def test_reads_a_mosi_file(tmp_path, mosi):
    data = load_aligned_features(write(tmp_path, mosi), "mosi")
    assert data.views == {"text": 12, "audio": 5, "vision": 7}
    assert data.task == "regression" and data.metrics == "mosi" and data.sequential
    assert data.sizes() == {"training": 20, "validation": 6, "test": 6}
    assert data.x["training"].shape == (20, 5, 24) and data.x["training"].dtype == torch.float32
    np.testing.assert_allclose(data.y["test"].numpy()[:, 0], mosi["test"]["labels"].reshape(-1))
    # standardised per feature with the training split's statistics
    train = data.x["training"].double().reshape(-1, 24)
    assert train.mean(0).abs().max() < 1e-5
    raw = mosi["test"]["text"]
    ref = mosi["train"]["text"].reshape(-1, 12)
    np.testing.assert_allclose(data.x["test"][..., :12].numpy(), (raw - ref.mean(0)) / ref.std(0), atol=1e-4)


def test_reads_a_folder_with_one_pickle_and_a_subset_of_modalities(tmp_path, mosi):
    write(tmp_path, mosi)
    data = load_views("mosi", tmp_path, modalities=("audio", "text"))
    assert list(data.views) == ["audio", "text"] and data.x["training"].shape[-1] == 17


def test_iemocap_label_formats(tmp_path):
    splits = synthetic_aligned_features("iemocap", samples={"train": 12, "valid": 4, "test": 4}, steps=3)
    index = load_aligned_features(write(tmp_path, splits, "a.pkl"), "iemocap")
    assert (
        index.task == "classification" and index.num_classes == 4 and index.y["training"].dtype == torch.int64
    )
    onehot, pairs = copy.deepcopy(splits), copy.deepcopy(splits)
    for split in splits:
        labels = splits[split]["labels"]
        onehot[split]["labels"] = np.eye(4)[labels]
        pairs[split]["labels"] = np.stack(
            [1 - np.eye(4)[labels], np.eye(4)[labels]], axis=2
        )  # MulT's N x 4 x 2
    for other in (onehot, pairs):
        data = load_aligned_features(write(tmp_path, other, "b.pkl"), "iemocap")
        for split in ("training", "test"):
            assert torch.equal(data.y[split], index.y[split])


def test_nonfinite_values_can_be_zeroed(tmp_path, mosi, caplog):
    mosi["train"]["audio"][0, 0, 0] = -np.inf  # as in the real CMU-MOSI audio features
    mosi["train"]["audio"][1, 2, 3] = np.nan
    with pytest.raises(
        ValueError, match=r"split 'train', modality 'audio': 2 non-finite values .*nonfinite='zero'"
    ):
        load_aligned_features(write(tmp_path, mosi), "mosi")
    data = load_aligned_features(write(tmp_path, mosi), "mosi", nonfinite="zero")
    assert torch.isfinite(data.x["training"]).all()
    assert "replaced 2 non-finite values by 0" in caplog.text


def _drop(splits, split, key):
    del splits[split][key]


BAD = {
    "missing split": (lambda s: s.pop("valid"), r"no split \['valid'\]"),
    "missing modality": (lambda s: _drop(s, "test", "vision"), r"split 'test': no \['vision'\]"),
    "missing labels": (lambda s: _drop(s, "train", "labels"), r"split 'train': no \['labels'\]"),
    "wrong rank": (
        lambda s: s["train"].__setitem__("audio", s["train"]["audio"][:, 0, :]),
        r"split 'train', modality 'audio': expected an array N x T x D \(3 dims\), got shape \(20, 5\)",
    ),
    "wrong length": (
        lambda s: s["valid"].__setitem__("vision", s["valid"]["vision"][:, :4]),
        r"split 'valid': aligned features need one sequence length T for every modality, "
        r"got \{'text': 5, 'audio': 5, 'vision': 4\}",
    ),
    "other width": (
        lambda s: s["test"].__setitem__("text", s["test"]["text"][:, :, :10]),
        r"split 'test', modality 'text': 10 features per step, but 12 in split 'train'",
    ),
    "different sample counts": (
        lambda s: s["train"].__setitem__("audio", s["train"]["audio"][:19]),
        r"split 'train': the modalities and labels have different sample counts: "
        r"\{'text': 20, 'audio': 19, 'vision': 20, 'labels': 20\}",
    ),
    "NaN": (
        lambda s: s["test"]["vision"].__setitem__((0, 0, 0), np.nan),
        r"split 'test', modality 'vision': 1 non-finite values",
    ),
    "text features": (
        lambda s: s["train"].__setitem__("text", np.full((20, 5, 12), "a")),
        r"split 'train', modality 'text': expected numbers, got dtype <U1",
    ),
    "score out of range": (
        lambda s: s["valid"]["labels"].__setitem__((2, 0, 0), 3.5),
        r"split 'valid', labels: CMU-MOSI sentiment scores lie in \[-3, 3\]; 1 do not \(e.g. 3.5\)",
    ),
    "NaN label": (
        lambda s: s["train"]["labels"].__setitem__((0, 0, 0), np.nan),
        r"split 'train', labels: 1 non-finite labels",
    ),
    "two scores per sample": (
        lambda s: s["test"].__setitem__("labels", np.zeros((6, 2), np.float32)),
        r"split 'test', labels: expected one sentiment score per sample",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_mosi_files_fail_naming_split_modality_and_expectation(tmp_path, mosi, case):
    change, message = BAD[case]
    change(mosi)
    with pytest.raises(ValueError, match=message):
        load_aligned_features(write(tmp_path, mosi), "mosi")


@pytest.mark.parametrize(
    "labels, num_classes, message",
    [
        (np.array([0, 1, 4, 2]), 4, r"split 'test', labels: class labels must lie in \[0, 4\), got 0..4"),
        (np.array([0, -1, 2, 2]), None, r"class labels must be >= 0, got -1"),
        (np.array([0.0, 1.5, 2.0, 1.0]), None, r"class labels must be whole numbers, got e.g. 1.5"),
        (np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]]), None, r"must be one-hot"),
    ],
)
def test_bad_iemocap_labels_fail_clearly(tmp_path, labels, num_classes, message):
    splits = synthetic_aligned_features("iemocap", samples={"train": 8, "valid": 4, "test": 4}, steps=3)
    splits["test"]["labels"] = labels
    with pytest.raises(ValueError, match=message):
        load_aligned_features(write(tmp_path, splits), "iemocap", num_classes=num_classes)


def test_file_problems_fail_clearly(tmp_path, mosi):
    with pytest.raises(FileNotFoundError, match="no aligned-feature pickle at"):
        load_aligned_features(tmp_path / "none.pkl")
    write(tmp_path, mosi, "a.pkl")
    write(tmp_path, mosi, "b.pkl")
    with pytest.raises(FileNotFoundError, match=r"holds 2 .pkl files"):
        load_aligned_features(tmp_path)
    write_aligned_features(tmp_path / "list" / "x.pkl", {})
    (tmp_path / "list" / "x.pkl").write_bytes(__import__("pickle").dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a dict of splits"):
        load_aligned_features(tmp_path / "list" / "x.pkl")
    with pytest.raises(ValueError, match="dataset must be 'mosi' or 'iemocap'"):
        load_aligned_features(tmp_path / "a.pkl", "food101")
    with pytest.raises(ValueError, match="nonfinite must be"):
        load_aligned_features(tmp_path / "a.pkl", nonfinite="drop")
