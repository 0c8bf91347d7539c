import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cggm_seg.balancing.tracker import GUARDED_DEFAULTS, BalanceTracker, balance_coefficients, score_slopes

F64 = torch.float64


def _b(*deltas, rho=1.0):
    return balance_coefficients(torch.tensor(deltas, dtype=F64), rho).tolist()


def test_formula_matches_hand_values_for_two_three_and_four_modalities():
    # B_i = rho * sum_{k != i} d_k / sum_k d_k
    assert _b(0.02, 0.01) == pytest.approx([1 / 3, 2 / 3], rel=1e-12)
    assert _b(0.1, 0.2, 0.3, rho=1.3) == pytest.approx([1.3 * 5 / 6, 1.3 * 4 / 6, 1.3 * 3 / 6], rel=1e-12)
    assert _b(0.04, 0.01, 0.03, 0.02) == pytest.approx([0.6, 0.9, 0.7, 0.8], rel=1e-12)
    # equal progress: rho * (M - 1) / M each; the sum is always rho * (M - 1)
    assert _b(0.01, 0.01, 0.01, 0.01) == pytest.approx([0.75] * 4, rel=1e-12)
    assert sum(_b(0.3, -0.1, 0.05, rho=1.3)) == pytest.approx(1.3 * 2, rel=1e-12)
    # the slowest modality is boosted the most, the fastest held back the most
    b = _b(0.04, 0.01, 0.03, 0.02)
    assert max(b) == b[1] and min(b) == b[0]


def test_formula_is_bare_for_mixed_signs_and_zero_sum():
    assert _b(0.03, -0.01) == pytest.approx([-0.5, 1.5], rel=1e-12)
    assert _b(0.25, -0.25) == [-math.inf, math.inf]
    with pytest.raises(ValueError, match="M >= 2"):
        balance_coefficients(torch.tensor([0.1]))


def test_paper_preset_is_the_formula_on_raw_scores():
    scores = [(0.50, 0.40, 0.30), (0.55, 0.42, 0.36), (0.57, 0.47, 0.35), (0.60, 0.47, 0.31)]
    tracker = BalanceTracker(["a", "b", "c"], rho=1.3, preset="paper")
    assert tracker.update(scores[0]).tolist() == [1.3, 1.3, 1.3]  # no change measured yet: neutral
    for prev, cur in zip(scores, scores[1:]):
        b = tracker.update(dict(zip("abc", cur)))
        d = [c - p for c, p in zip(cur, prev)]
        expected = [1.3 * (sum(d) - d[i]) / sum(d) for i in range(3)]
        assert b.tolist() == pytest.approx(expected, rel=1e-12)
        assert tracker.delta.tolist() == pytest.approx(d, rel=1e-12)
    assert (tracker.B < 0).any()  # mixed signs in the last step: the bare formula goes negative


def test_paper_preset_takes_no_guards():
    with pytest.raises(ValueError, match="preset='paper'.*ema"):
        BalanceTracker(["a", "b"], preset="paper", ema=0.5)
    with pytest.raises(ValueError, match="renormalize"):
        BalanceTracker(["a", "b"], preset="paper", renormalize=True)
    paper = BalanceTracker(["a", "b"], preset="paper")
    paper.update([0.5, 0.5])
    assert paper.update([0.75, 0.25]).isinf().all()  # sum d == 0: comparison only


def test_guarded_falls_back_to_neutral_when_sum_is_near_zero():
    tracker = BalanceTracker(["a", "b", "c"], rho=1.3, ema=0.0, tau=1e-3, preset="guarded")
    tracker.update([0.5, 0.5, 0.5])
    b = tracker.update([0.6, 0.45, 0.4495])  # d sum = -5e-4
    assert b.tolist() == pytest.approx([1.3, 1.3, 1.3])
    b = tracker.update([0.62, 0.46, 0.4595])  # d = (0.02, 0.01, 0.01): the formula
    assert b.tolist() == pytest.approx([1.3 * 0.5, 1.3 * 0.75, 1.3 * 0.75])


def test_guarded_mixed_signs_are_clamped_never_negative():
    tracker = BalanceTracker(["a", "b"], ema=0.0, preset="guarded")
    tracker.update([0.5, 0.5])
    b = tracker.update([0.53, 0.49])  # raw formula: (-0.5, 1.5)
    assert b.tolist() == pytest.approx([GUARDED_DEFAULTS["b_min"], 1.5])
    tracker.update([0.53, 0.49])
    b = tracker.update([0.50, 0.53])  # d = (-0.03, 0.04): raw (4, -3)
    assert b.tolist() == pytest.approx([GUARDED_DEFAULTS["b_max"], GUARDED_DEFAULTS["b_min"]])


def test_clamp_then_renormalize_then_clamp():
    tracker = BalanceTracker(
        ["a", "b", "c", "d"], ema=0.0, b_min=0.2, b_max=2.0, renormalize=True, preset="guarded"
    )
    tracker.update([0.5, 0.5, 0.5, 0.5])
    b = tracker.update([0.54, 0.51, 0.53, 0.52])  # raw (0.6, 0.9, 0.7, 0.8), mean 0.75
    assert b.tolist() == pytest.approx([0.8, 1.2, 14 / 15, 16 / 15])
    assert b.mean().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="b_min <= 1 <= b_max"):
        BalanceTracker(["a", "b"], b_min=1.5, b_max=2.0, renormalize=True)


def test_ema_smooths_scores_and_warmup_holds_neutral():
    tracker = BalanceTracker(["a", "b"], ema=0.5, warmup=2, tau=0.0, preset="guarded")
    tracker.update([0.2, 0.4])
    assert tracker.eps.tolist() == [0.2, 0.4]
    b = tracker.update([0.4, 0.4])  # eps = (0.3, 0.4), d = (0.1, 0): still warming up
    assert tracker.eps.tolist() == pytest.approx([0.3, 0.4])
    assert tracker.delta.tolist() == pytest.approx([0.1, 0.0])
    assert b.tolist() == [1.0, 1.0]
    b = tracker.update([0.3, 0.6])  # eps = (0.3, 0.5), d = (0, 0.1): the formula -> (1, 0)
    assert b.tolist() == pytest.approx([1.0, GUARDED_DEFAULTS["b_min"]])
    assert tracker.step == 3


def test_non_finite_scores_do_not_poison_the_average():
    tracker = BalanceTracker(["a", "b"], ema=0.0, tau=0.0, preset="guarded")
    tracker.update([0.5, 0.5])
    assert tracker.update([math.nan, 0.6]).tolist() == [1.0, 1.0]
    assert tracker.eps.tolist() == [0.5, 0.5] and tracker.delta.tolist() == [0.0, 0.0]
    assert tracker.update([0.52, 0.51]).tolist() == pytest.approx([1 / 3, 2 / 3])


def test_update_checks_the_modalities():
    tracker = BalanceTracker(["t1", "t2"])
    with pytest.raises(ValueError, match="one entry per modality"):
        tracker.update({"t1": 0.5, "flair": 0.5})
    with pytest.raises(ValueError, match="expected 2 scores"):
        tracker.update([0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="two distinct"):
        BalanceTracker(["t1", "t1"])
    with pytest.raises(ValueError, match="b_min"):
        BalanceTracker(["t1", "t2"], b_min=0.0)


score = st.one_of(
    st.sampled_from([0.0, 1.0, 0.5, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0.0, 1.0),
)


@settings(max_examples=150, deadline=None)
@given(
    m=st.integers(2, 5),
    data=st.data(),
    ema=st.sampled_from([0.0, 0.5, 0.9]),
    tau=st.sampled_from([0.0, 1e-4, 1.0]),
    rho=st.sampled_from([0.5, 1.0, 1.3, 7.0]),
    b_min=st.floats(0.01, 1.0),
    b_max=st.floats(1.0, 10.0),
    renormalize=st.booleans(),
    warmup=st.integers(0, 3),
)
def test_guarded_b_is_always_finite_and_bounded(m, data, ema, tau, rho, b_min, b_max, renormalize, warmup):
    tracker = BalanceTracker(
        [f"m{i}" for i in range(m)], rho, ema, tau, b_min, b_max, renormalize, warmup, preset="guarded"
    )
    rows = data.draw(
        st.lists(st.one_of(st.lists(score, min_size=m, max_size=m), st.just([0.5] * m)), max_size=12)
    )
    for row in rows:
        b = tracker.update(row)
        assert torch.isfinite(b).all()
        assert (b >= b_min).all() and (b <= b_max).all()
        assert b.shape == (m,)


def test_state_dict_roundtrip_resumes_identically(tmp_path):
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(12, 3, generator=g, dtype=F64).cumsum(0) / 12
    original = BalanceTracker(["a", "b", "c"], rho=1.3, warmup=2, renormalize=True)
    for row in scores[:6]:
        original.update(row)
    torch.save(original.state_dict(), tmp_path / "tracker.pt")
    resumed = BalanceTracker(["a", "b", "c"], rho=1.3, warmup=2, renormalize=True)
    resumed.load_state_dict(torch.load(tmp_path / "tracker.pt", weights_only=True))
    for row in scores[6:]:
        assert torch.equal(original.update(row), resumed.update(row))
    assert torch.equal(original.eps, resumed.eps) and original.step == resumed.step == 12
    assert list(original.history) == list(resumed.history)
    assert resumed.history[-1]["iteration"] == 12 and set(resumed.history[-1]) >= {"eps_a", "d_b", "B_c"}
    with pytest.raises(ValueError, match="the state is for"):
        BalanceTracker(["x", "y", "z"]).load_state_dict(original.state_dict())


# -- the trend preset (default) ------------------------------------------------------------------


def test_score_slopes_against_hand_computed_values():
    # y = 1, 3, 2 at t = -1, 0, 1: Sxx = 2, slope = ((-1)(-1) + 0 + 1 * 0) / 2 = 0.5;
    # residuals -0.5, 1, -0.5 -> s^2 = 1.5 / (3 - 2) = 1.5, se = sqrt(1.5 / 2)
    slope, se = score_slopes(torch.tensor([[1.0, 0.0], [3.0, 1.0], [2.0, 2.0]], dtype=F64))
    assert slope.tolist() == pytest.approx([0.5, 1.0])
    assert se.tolist() == pytest.approx([math.sqrt(0.75), 0.0])
    with pytest.raises(ValueError, match="W >= 3"):
        score_slopes(torch.zeros(2, 4, dtype=F64))


def test_trend_b_from_noiseless_linear_scores_by_hand():
    # slopes 1, 2, 3, 4 (x 1e-3): B = (S - d_i) / S = 0.9, 0.8, 0.7, 0.6, mean 0.75 -> / 0.75
    tracker = BalanceTracker(["a", "b", "c", "d"], window=5)
    trends = torch.tensor([1e-3, 2e-3, 3e-3, 4e-3], dtype=F64)
    for t in range(5):
        b = tracker.update(0.2 + trends * t)
        if t < 4:
            assert b.tolist() == [1.0] * 4  # warm-up: the window is not full yet
    assert tracker.delta.tolist() == pytest.approx(trends.tolist())
    assert b.tolist() == pytest.approx([1.2, 0.8 / 0.75, 0.7 / 0.75, 0.8])
    assert float(b.mean()) == pytest.approx(1.0)
    assert tracker.eps.tolist() == pytest.approx((0.2 + 2 * trends).tolist())  # the window's mean


def test_trend_is_neutral_without_significant_progress():
    g = torch.Generator().manual_seed(0)
    tracker = BalanceTracker(["a", "b", "c"], window=20)
    for _ in range(40):  # flat scores with noise: the summed slope is within its noise
        b = tracker.update(0.5 + 0.1 * torch.randn(3, generator=g, dtype=F64))
        assert b.tolist() == [1.0, 1.0, 1.0]
    assert BalanceTracker(["a", "b"]).neutral().tolist() == [1.0, 1.0]  # the mean of a renormalised B


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@pytest.mark.parametrize(("preset", "recovers"), [("trend", True), ("guarded", False), ("paper", False)])
def test_default_recovers_the_order_of_noisy_trends(preset, recovers):
    """M = 4 heads improving linearly at known rates, Gaussian batch noise of 0.1 on every score:
    the slower a head improves, the larger its B should be. The windowed slope recovers that order;
    a per-iteration change (smoothed or not) does not."""
    trends = torch.tensor([0.5e-3, 1e-3, 2e-3, 3e-3], dtype=F64)
    per_seed = []
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        tracker = BalanceTracker(["a", "b", "c", "d"], preset=preset)
        rhos = []
        for t in range(300):
            b = tracker.update(0.1 + trends * t + 0.1 * torch.randn(4, generator=g, dtype=F64))
            if t >= 100:  # after the trend preset's warm-up; a neutral or broken B has no order
                ok = torch.isfinite(b).all() and len(set(b.tolist())) > 1
                rhos.append(_spearman(b, -trends) if ok else 0.0)
        per_seed.append(sum(rhos) / len(rhos))
    mean = sum(per_seed) / len(per_seed)
    if recovers:
        assert mean >= 0.8, per_seed
    else:
        assert abs(mean) < 0.3, per_seed


def test_trend_state_dict_resumes_the_window():
    g = torch.Generator().manual_seed(1)
    scores = 0.1 + torch.arange(30, dtype=F64)[:, None] * torch.tensor([1e-2, 2e-2, 3e-2], dtype=F64)
    scores = scores + 0.01 * torch.randn(30, 3, generator=g, dtype=F64)
    original = BalanceTracker(["a", "b", "c"], window=8)
    for row in scores[:12]:
        original.update(row)
    resumed = BalanceTracker(["a", "b", "c"], window=8)
    resumed.load_state_dict(original.state_dict())
    for row in scores[12:]:
        assert torch.equal(original.update(row), resumed.update(row))
    assert not torch.equal(original.B, torch.ones(3, dtype=F64))


def test_settings_of_another_preset_are_refused():
    with pytest.raises(ValueError, match="ema and tau belong to preset='guarded'"):
        BalanceTracker(["a", "b"], ema=0.9)
    with pytest.raises(ValueError, match="window and z belong to preset='trend'"):
        BalanceTracker(["a", "b"], preset="guarded", window=10)
    with pytest.raises(ValueError, match="window must be >= 3"):
        BalanceTracker(["a", "b"], window=2)


def test_trend_guard_holds_under_noise_shared_by_the_heads():
    """Heads scored on the same batch share its noise: with no trend at all, B must stay neutral
    in nearly every window (the guard's z = 2 false-positive rate is about 2.3 % one-sided)."""
    g = torch.Generator().manual_seed(0)
    tracker = BalanceTracker(["a", "b", "c", "d"])
    moved = 0
    for t in range(1100):
        shared = 0.1 * torch.randn(1, generator=g, dtype=F64)
        b = tracker.update(0.5 + shared + 0.03 * torch.randn(4, generator=g, dtype=F64))
        moved += t >= 100 and b.tolist() != [1.0] * 4
    assert moved / 1000 < 0.06


# -- history ------------------------------------------------------------------------------------


def test_history_is_a_list_of_the_last_updates():
    tracker = BalanceTracker(["a", "b"], preset="guarded", ema=0.0, tau=0.0, history_size=12)
    for t in range(20):
        tracker.update([0.1 + 0.02 * t, 0.1 + 0.01 * t])
    history = tracker.history
    assert isinstance(history, list) and len(history) == 12  # updates 9..20 kept
    assert [h["iteration"] for h in history] == [float(t) for t in range(9, 21)]  # the update count
    every_third = history[1::3]  # slicing works: updates 10, 13, 16, 19
    assert [h["iteration"] for h in every_third] == [10.0, 13.0, 16.0, 19.0]
    assert history[-1]["B_a"] == pytest.approx(1 / 3) and history[-1]["B_b"] == pytest.approx(2 / 3)
    assert history[-1]["eps_a"] == pytest.approx(0.1 + 0.02 * 19)
    assert history[-1]["d_b"] == pytest.approx(0.01)
    long = BalanceTracker(["a", "b"], history_size=100)
    for _ in range(20):
        long.update([0.5, 0.5])
    assert [h["iteration"] for h in long.history[9::3]] == [10.0, 13.0, 16.0, 19.0]
    none = BalanceTracker(["a", "b"], history_size=0)
    none.update([0.5, 0.5])
    assert none.history == []


def test_a_loaded_history_is_trimmed_to_history_size():
    tracker = BalanceTracker(["a", "b"])
    for _ in range(10):
        tracker.update([0.5, 0.5])
    short = BalanceTracker(["a", "b"], history_size=4)
    short.load_state_dict(tracker.state_dict())
    assert isinstance(short.history, list)
    assert [h["iteration"] for h in short.history] == [7.0, 8.0, 9.0, 10.0]
    short.update([0.5, 0.5])
    assert [h["iteration"] for h in short.history] == [8.0, 9.0, 10.0, 11.0]
    none = BalanceTracker(["a", "b"], history_size=0)
    none.load_state_dict(tracker.state_dict())
    assert none.history == []


def test_a_state_saved_with_the_retired_observe_every_setting_still_loads():
    tracker = BalanceTracker(["a", "b"])
    tracker.update([0.1, 0.2])
    state = tracker.state_dict()
    state["settings"]["observe_every"] = 1  # checkpoints of before its retirement carry it
    resumed = BalanceTracker(["a", "b"])
    resumed.load_state_dict(state)
    assert resumed.step == 1 and resumed.raw.tolist() == [0.1, 0.2]
