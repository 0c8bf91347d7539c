import pytest

from cggm_seg.evaluation.plots import plot_balance_history


def test_plot_balance_history_writes_png(tmp_path):
    history = [
        {"iteration": i, "eps_t1": 0.1 * i, "eps_t2": 0.05 * i, "B_t1": 0.8, "B_t2": 1.2} for i in range(9)
    ]
    png = plot_balance_history(history, ["t1", "t2"], tmp_path / "b.png", title="test")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000


def test_plot_balance_history_rejects_empty_or_unknown(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_balance_history([], ["t1"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="none of"):
        plot_balance_history([{"loss": 1.0}], ["t1"], tmp_path / "x.png")
