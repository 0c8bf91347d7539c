"""The multi-view scikit-learn datasets: documented view splits, stratified seeded splits, train-only
standardisation, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import datasets

from cggm_seg.apps.multiview.views import load_sklearn_views, load_views, sklearn_views, stratified_split

MEASURES = [
    "radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
    "concave points", "symmetry", "fractal dimension",
]  # fmt: skip


def test_breast_cancer_views_are_mean_error_worst_of_the_ten_measures():
    data = load_sklearn_views("breast_cancer")
    assert data.views == {"mean": 10, "error": 10, "worst": 10}
    assert data.feature_names["mean"] == [f"mean {m}" for m in MEASURES]
    assert data.feature_names["error"] == [f"{m} error" for m in MEASURES]
    assert data.feature_names["worst"] == [f"worst {m}" for m in MEASURES]
    assert data.task == "classification" and data.num_classes == 2
    assert data.class_names == ["malignant", "benign"]
    assert sum(data.sizes().values()) == 569


def test_diabetes_views_are_clinical_and_serum():
    data = load_sklearn_views("diabetes")
    assert data.feature_names == {
        "clinical": ["age", "sex", "bmi", "bp"],
        "serum": [f"s{i}" for i in range(1, 7)],
    }
    assert data.task == "regression" and data.out_features == 1
    assert sum(data.sizes().values()) == 442


def test_digits_views_are_the_four_quadrants_of_the_image():
    bunch = datasets.load_digits()
    columns = sklearn_views("digits", bunch.feature_names)
    assert list(columns) == ["top_left", "top_right", "bottom_left", "bottom_right"]
    images = bunch.images
    quadrants = {
        "top_left": images[:, :4, :4], "top_right": images[:, :4, 4:],
        "bottom_left": images[:, 4:, :4], "bottom_right": images[:, 4:, 4:],
    }  # fmt: skip
    for view, cols in columns.items():
        np.testing.assert_array_equal(bunch.data[:, cols], quadrants[view].reshape(len(images), 16))
    data = load_sklearn_views("digits")
    assert data.views == dict.fromkeys(quadrants, 16) and data.num_classes == 10


def test_the_inputs_are_the_views_columns_standardised_on_train():
    bunch = datasets.load_breast_cancer()
    data = load_sklearn_views("breast_cancer", seed=3)
    train, val, test = stratified_split(bunch.target, (0.6, 0.2, 0.2), seed=3)
    names = [n for view in data.feature_names.values() for n in view]
    order = [list(bunch.feature_names).index(n) for n in names]
    raw = bunch.data[:, order]
    mean, std = raw[train].mean(0), raw[train].std(0)
    for split, index in (("training", train), ("validation", val), ("test", test)):
        np.testing.assert_allclose(data.x[split].numpy(), (raw[index] - mean) / std, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(data.y[split].numpy(), bunch.target[index])


@pytest.mark.parametrize("name", ["breast_cancer", "digits"])
def test_splits_are_stratified_disjoint_and_seeded(name):
    a, b, c = (load_sklearn_views(name, seed=s) for s in (0, 0, 1))
    for split in ("training", "validation", "test"):
        assert torch.equal(a.x[split], b.x[split]) and torch.equal(a.y[split], b.y[split])
    assert not torch.equal(a.y["test"], c.y["test"]) or not torch.equal(a.x["test"], c.x["test"])
    labels = np.concatenate([a.y[s].numpy() for s in ("training", "validation", "test")])
    overall = np.bincount(labels) / len(labels)
    for split in ("training", "validation", "test"):
        share = np.bincount(a.y[split].numpy(), minlength=len(overall)) / len(a.y[split])
        assert np.abs(share - overall).max() < 0.02, split  # stratified: one sample or so per class
    sizes = a.sizes()
    total = sum(sizes.values())
    assert abs(sizes["training"] / total - 0.6) < 0.01 and abs(sizes["test"] / total - 0.2) < 0.01


def test_split_indices_cover_every_sample_once():
    strata = np.repeat([0, 1, 2], 20)
    parts = stratified_split(strata, (0.5, 0.25, 0.25), seed=4)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(60))
    assert [len(p) for p in parts] == [30, 15, 15]


def test_standardisation_uses_the_training_split_only():
    data = load_sklearn_views("breast_cancer")
    train = data.x["training"].double()
    assert train.mean(0).abs().max() < 1e-5
    assert (train.std(0, unbiased=False) - 1).abs().max() < 1e-4
    # the other splits carry the training statistics, so their means are not exactly 0
    assert data.x["validation"].double().mean(0).abs().max() > 1e-3


def test_regression_targets_are_standardised_on_train_and_map_back():
    data = load_sklearn_views("diabetes")
    bunch = datasets.load_diabetes()
    y = data.y["training"].double()
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1) < 1e-4
    back = (
        torch.cat([data.y[s] for s in ("training", "validation", "test")]) * data.target_std
        + data.target_mean
    )
    assert sorted(back.reshape(-1).round().tolist()) == sorted(bunch.target.tolist())


def test_records_are_image_label_dicts():
    data = load_sklearn_views("digits")
    record = data.records("test")[0]
    assert record["image"].shape == (64,) and record["label"].dtype == torch.int64


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: load_views("iris"), "unknown dataset 'iris'"),
        (lambda: load_views("digits", "/data"), "'digits' takes neither dataset_dir nor data_options"),
        (
            lambda: load_views("mfeat", modalities=["fou"]),
            "'mfeat' takes neither dataset_dir nor data_options",
        ),
        (lambda: load_views("mosi"), "give --dataset_dir"),
        (lambda: load_sklearn_views("digits", fractions=(0.5, 0.5)), "three positive numbers"),
        (lambda: load_sklearn_views("digits", fractions=(0.8, 0.0, 0.2)), "three positive numbers"),
        (lambda: sklearn_views("breast_cancer", ["mean radius", "radius error"]), "documented views"),
        (lambda: sklearn_views("wine", []), "unknown scikit-learn dataset"),
    ],
)
def test_bad_requests_fail_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()
