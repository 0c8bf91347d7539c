"""Your own multi-view data: the .npz format read back exactly, split and standardised as documented,
and every bad file refused naming the view, the split and what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cggm_seg.apps.multiview.arrays import load_view_file, views_from_arrays, write_view_file
from cggm_seg.apps.multiview.views import load_views


def _classification(n: int = 60, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    views = {"shape": rng.normal(size=(n, 4)) + y[:, None], "colour": rng.normal(size=(n, 2))}
    return views, y


def test_round_trip_keeps_names_order_and_values(tmp_path):
    views, y = _classification()
    split = np.array(["train"] * 36 + ["valid"] * 12 + ["test"] * 12)
    file = write_view_file(tmp_path / "my_cohort.npz", views, y, split=split, class_names=["a", "b", "c"])
    data = load_views(str(file))
    assert data.name == "my_cohort" and data.task == "classification" and data.num_classes == 3
    assert data.views == {"shape": 4, "colour": 2} and data.class_names == ["a", "b", "c"]
    assert data.sizes() == {"training": 36, "validation": 12, "test": 12}
    # the given split is kept sample for sample, and standardised with the training rows only
    raw = np.concatenate([views["shape"], views["colour"]], axis=1)
    mean, std = raw[:36].mean(axis=0), raw[:36].std(axis=0)
    np.testing.assert_allclose(data.x["test"].numpy(), (raw[48:] - mean) / std, rtol=1e-5, atol=1e-6)
    assert torch.equal(data.y["validation"], torch.from_numpy(y[36:48]))
    assert data.feature_names["colour"] == ["colour_0", "colour_1"]


def test_without_a_split_the_fractions_split_it_stratified_and_seeded(tmp_path):
    views, y = _classification(100)
    file = write_view_file(tmp_path / "d.npz", views, y)
    a = load_view_file(file, seed=3, fractions=(0.6, 0.2, 0.2))
    b = load_view_file(file, seed=3, fractions=(0.6, 0.2, 0.2))
    c = load_view_file(file, seed=4, fractions=(0.6, 0.2, 0.2))
    assert a.sizes() == {"training": 60, "validation": 20, "test": 20}
    assert torch.equal(a.x["test"], b.x["test"]) and not torch.equal(a.x["test"], c.x["test"])
    counts = torch.bincount(a.y["training"], minlength=3).tolist()
    assert max(counts) - min(counts) <= 1  # 100 samples of 3 classes, stratified


def test_float_targets_are_a_regression_standardised_on_training():
    rng = np.random.default_rng(1)
    y = rng.normal(5.0, 2.0, size=50)
    data = views_from_arrays("r", {"a": rng.normal(size=(50, 3))}, y, seed=0)
    assert data.task == "regression" and data.out_features == 1 and data.num_classes == 0
    train = data.y["training"][:, 0].double() * data.target_std + data.target_mean
    assert float(train.mean()) == pytest.approx(data.target_mean) and data.target_std == pytest.approx(
        float(train.std(unbiased=False))
    )


def test_task_overrides_the_dtype_and_sequences_are_read():
    rng = np.random.default_rng(2)
    y = (np.arange(30) % 2).astype(np.float32)  # labels stored as floats
    views = {"audio": rng.normal(size=(30, 5, 3)), "text": rng.normal(size=(30, 5, 7))}
    data = views_from_arrays("seq", views, y, task="classification", seed=0, fractions=(0.5, 0.25, 0.25))
    assert data.task == "classification" and data.sequential and data.views == {"audio": 3, "text": 7}
    assert data.x["training"].shape[1:] == (5, 10) and data.y["training"].dtype == torch.int64


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda v, y, s: ({**v, "colour": v["colour"][:50]}, y, s),
            r"view 'colour': 50 samples, but y has 60",
        ),
        (
            lambda v, y, s: ({**v, "colour": v["colour"].astype(str)}, y, s),
            r"view 'colour': expected numbers",
        ),
        (
            lambda v, y, s: ({**v, "colour": v["colour"][:, :, None]}, y, s),
            r"view 'colour'.*every view must be vectors",
        ),
        (
            lambda v, y, s: ({**v, "colour": v["colour"][:, 0]}, y, s),
            r"view 'colour': expected N x D vectors",
        ),
        (lambda v, y, s: ({}, y, s), r"no views"),
        (lambda v, y, s: ({**v, "a.b": v["colour"]}, y, s), r"without '\.'"),
        (lambda v, y, s: (v, y[:, None].repeat(2, 1), s), r"y: expected N targets"),
        (lambda v, y, s: (v, y - 1, s), r"y: class labels must be 0 \.\. C-1, got -1"),
        (lambda v, y, s: (v, y.astype(str), s), r"y: expected integer labels or float targets"),
        (lambda v, y, s: (v, y, s[:10]), r"split: expected 60 strings"),
        (lambda v, y, s: (v, y, np.where(s == "test", "testing", s)), r"split: unknown values \['testing'\]"),
        (
            lambda v, y, s: (v, y, np.where(s == "test", "train", s)),
            r"split: every split needs samples.*'test': 0",
        ),
    ],
)
def test_bad_arrays_fail_naming_what_is_wrong(change, message):
    views, y = _classification()
    split = np.array(["train"] * 36 + ["valid"] * 12 + ["test"] * 12)
    views, y, split = change(views, y, split)
    with pytest.raises(ValueError, match=message):
        views_from_arrays("d", views, y, split=split)


def test_nonfinite_values_name_the_view_the_samples_and_their_split():
    views, y = _classification()
    views["colour"][[40, 55], 1] = np.nan
    split = np.array(["train"] * 36 + ["valid"] * 12 + ["test"] * 12)
    with pytest.raises(ValueError, match=r"view 'colour': non-finite values \(NaN or inf\) in 2 samples, "
                       r"e\.g\. \[40, 55\] \(split 'test', 'validation'\)"):  # fmt: skip
        views_from_arrays("d", views, y, split=split)
    y = y.astype(float)
    y[3] = np.inf
    with pytest.raises(ValueError, match=r"y: non-finite targets .* \[3\]"):
        views_from_arrays("d", _classification()[0], y)


def test_sequences_of_different_lengths_and_bad_names_fail():
    rng = np.random.default_rng(0)
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match=r"view 'b': 4 steps, view 'a' 5: .* same length T"):
        views_from_arrays("d", {"a": rng.normal(size=(20, 5, 2)), "b": rng.normal(size=(20, 4, 2))}, y)
    with pytest.raises(ValueError, match=r"dataset name must be letters"):
        views_from_arrays("my data/1", {"a": rng.normal(size=(20, 2))}, y)
    with pytest.raises(ValueError, match=r"class_names: 3 names for 2 classes"):
        views_from_arrays("d", {"a": rng.normal(size=(20, 2))}, y, class_names=["x", "y", "z"])


def test_bad_files_fail_naming_the_file_and_the_key(tmp_path):
    views, y = _classification()
    np.savez(tmp_path / "extra.npz", view_a=views["shape"], y=y, labels=y)
    with pytest.raises(ValueError, match=r"extra\.npz: unknown keys \['labels'\]"):
        load_view_file(tmp_path / "extra.npz")
    np.savez(tmp_path / "noy.npz", view_a=views["shape"])
    with pytest.raises(ValueError, match=r"noy\.npz: no targets 'y'"):
        load_view_file(tmp_path / "noy.npz")
    np.savez(tmp_path / "obj.npz", view_a=np.array([[1, "x"]] * 60, dtype=object), y=y)
    with pytest.raises(ValueError, match=r"obj\.npz: view_a: cannot be read without pickle"):
        load_view_file(tmp_path / "obj.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match=r"text\.npz: not a NumPy \.npz archive"):
        load_view_file(tmp_path / "text.npz")
    np.savez(tmp_path / "nan.npz", view_a=np.full((60, 2), np.nan), y=y)
    with pytest.raises(ValueError, match=r"nan\.npz: view 'a': non-finite"):
        load_views(str(tmp_path / "nan.npz"))
    with pytest.raises(FileNotFoundError, match="no multi-view data file"):
        load_views(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="takes neither dataset_dir nor data_options"):
        load_views(str(tmp_path / "extra.npz"), dataset_dir=str(tmp_path))


def test_labels_must_cover_every_class_and_a_regression_target_must_vary():
    views, y = _classification()
    with pytest.raises(ValueError, match=r"every class present; labels up to 3 but no sample of \[0\]"):
        views_from_arrays("d", views, y + 1)
    with pytest.raises(ValueError, match=r"store floats or set task='regression'"):
        views_from_arrays("d", views, np.where(y == 1, 10**9, y))
    with pytest.raises(ValueError, match=r"regression target is constant \(2\) over the training split"):
        views_from_arrays("d", views, np.full(60, 2.0))
    with pytest.raises(ValueError, match=r"y: 2 samples; .* need at least 3"):
        views_from_arrays("d", {"a": np.zeros((2, 2))}, np.array([0, 1]))
    # integer targets read as a regression when the file says so
    data = views_from_arrays("d", views, np.arange(60), task="regression")
    assert data.task == "regression" and data.y["training"].dtype == torch.float32


def test_a_class_missing_from_the_given_training_split_is_logged(caplog):
    views, y = _classification()
    split = np.array(["train"] * 36 + ["valid"] * 12 + ["test"] * 12)
    y = y.copy()
    y[:36][y[:36] == 2] = 0  # class 2 only in validation and test
    with caplog.at_level("WARNING", logger="cggm_seg.data"):
        views_from_arrays("d", views, y, split=split)
    assert "classes [2] have no training sample" in caplog.text


def test_a_regression_split_is_stratified_by_target_quintile():
    rng = np.random.default_rng(3)
    y = rng.normal(size=200)
    data = views_from_arrays("r", {"a": rng.normal(size=(200, 2))}, y, seed=0, fractions=(0.6, 0.2, 0.2))
    edges = np.quantile(y, [0.2, 0.4, 0.6, 0.8])
    for split, expected in (("training", 24), ("test", 8)):
        target = data.y[split][:, 0].double().numpy() * data.target_std + data.target_mean
        assert np.bincount(np.digitize(target, edges), minlength=5).tolist() == [expected] * 5


def test_file_keys_task_and_class_names_and_the_name_from_the_file(tmp_path):
    views, y = _classification()
    file = write_view_file(tmp_path / "My Cohort.NPZ", views, y, task="regression")
    data = load_views(str(file))
    assert data.name == "My_Cohort" and data.task == "regression"
    np.savez(tmp_path / "bad.npz", view_a=views["shape"], y=y, class_names=np.array("abc"))
    with pytest.raises(ValueError, match=r"bad\.npz: class_names: expected C strings"):
        load_view_file(tmp_path / "bad.npz")
    np.savez(tmp_path / "mod.npz", view_training=views["shape"], y=y)
    with pytest.raises(ValueError, match=r"'training' is the name of an attribute of a PyTorch module"):
        load_view_file(tmp_path / "mod.npz")
