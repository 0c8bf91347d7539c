import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cggm_seg.balancing.head_trainer import HeadTrainer
from cggm_seg.balancing.ogmge import OGMGE, discrepancy_ratios, ogm_coefficients

from .toy_nets import MODALITIES, SegHead, ToySegNet, seg_batch

F64 = torch.float64
seg_loss = F.binary_cross_entropy_with_logits


def _k(scores, alpha, continuous=False):
    return ogm_coefficients(discrepancy_ratios(torch.tensor(scores, dtype=F64)), alpha, continuous).tolist()


def test_two_modalities_match_the_paper():
    # per-sample true-class probabilities of a batch of two
    s_audio, s_visual = torch.tensor([0.7, 0.5], dtype=F64), torch.tensor([0.2, 0.4], dtype=F64)
    rho_v = s_visual.sum() / s_audio.sum()  # the paper: rho^v = sum s^v / sum s^a, rho^a = 1 / rho^v
    ratios = discrepancy_ratios(torch.stack([s_audio.mean(), s_visual.mean()]))
    assert ratios.tolist() == pytest.approx([1 / rho_v.item(), rho_v.item()], rel=1e-12)
    assert ratios.tolist() == pytest.approx([2.0, 0.5], rel=1e-12)
    # k = 1 - tanh(alpha * rho) for the dominant modality (rho > 1), else 1
    assert _k([0.6, 0.3], alpha=0.5) == pytest.approx([1 - math.tanh(1.0), 1.0], rel=1e-12)
    assert _k([0.6, 0.3], alpha=0.5) == pytest.approx([0.2384058440442351, 1.0], rel=1e-12)
    assert _k([0.6, 0.3], alpha=0.5, continuous=True) == pytest.approx([1 - math.tanh(0.5), 1.0], rel=1e-12)


def test_more_modalities_compare_with_the_mean_of_the_others():
    # rho_m = s_m / mean_{k != m} s_k
    assert discrepancy_ratios(torch.tensor([0.6, 0.3, 0.3], dtype=F64)).tolist() == pytest.approx(
        [2, 2 / 3, 2 / 3]
    )
    assert discrepancy_ratios(torch.tensor([0.8, 0.4, 0.4, 0.4], dtype=F64)).tolist() == pytest.approx(
        [2.0, 0.75, 0.75, 0.75]
    )
    assert _k([0.6, 0.3, 0.3], alpha=0.8) == pytest.approx([1 - math.tanh(1.6), 1.0, 1.0])
    # the paper's form jumps at rho = 1, the continuous one does not
    assert _k([0.50001, 0.5], alpha=0.8)[0] == pytest.approx(1 - math.tanh(0.8), rel=1e-4)
    assert _k([0.50001, 0.5], alpha=0.8, continuous=True)[0] == pytest.approx(1.0, abs=1e-4)


def test_degenerate_scores():
    assert _k([0.5, 0.0], alpha=1.0) == [0.0, 1.0]  # the formula's limit: rho = inf
    assert _k([0.0, 0.0], alpha=1.0) == [1.0, 1.0]  # no evidence of dominance
    assert _k([math.nan, 0.3], alpha=1.0) == [1.0, 1.0]
    with pytest.raises(ValueError, match="M >= 2"):
        discrepancy_ratios(torch.tensor([0.5]))


def _setup(**kwargs):
    torch.manual_seed(0)
    model = ToySegNet()
    heads = nn.ModuleDict({m: SegHead() for m in MODALITIES})
    trainer = HeadTrainer(
        heads, seg_loss, torch.optim.SGD(heads.parameters(), lr=0.1), "region_true_class_probability"
    )
    return model, OGMGE(**kwargs).bind(model, trainer)


def _grads_after(model, ogm, epoch, k=None):
    x, y = seg_batch()
    model.zero_grad()
    loss = seg_loss(model(x), y)
    ogm.observe(y)
    if k is not None:
        ogm.k = torch.tensor(k, dtype=F64)
    loss.backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    ogm.apply_magnitude(epoch=epoch)
    return before, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_ogm_scales_every_parameter_of_a_branch_any_rank_and_nothing_else():
    model, ogm = _setup(noise=False)
    k = [0.3, 1.0, 0.6, 1.0]
    before, after = _grads_after(model, ogm, epoch=0, k=k)
    ranks = set()
    for name, g in after.items():
        factor = k[MODALITIES.index(name.split(".")[1])] if name.startswith("encoders.") else 1.0
        torch.testing.assert_close(g, before[name] * factor, rtol=0, atol=0)
        ranks.add(g.ndim)
    assert ranks == {1, 5}  # 5-D Conv3d weights and 1-D biases alike
    assert set(ogm.stats) >= {f"{s}_{m}" for s in ("s", "rho", "k", "head_loss") for m in MODALITIES}


def test_nothing_changes_outside_the_epoch_window():
    model, ogm = _setup(start_epoch=2, end_epoch=4)
    assert [ogm.in_window(e) for e in range(5)] == [False, False, True, True, False]
    before, after = _grads_after(model, ogm, epoch=4, k=[0.3, 1.0, 0.6, 1.0])
    assert all(torch.equal(before[n], after[n]) for n in before)
    with pytest.raises(ValueError, match="empty"):
        _setup(start_epoch=3, end_epoch=3)


def test_ge_noise_has_the_gradients_spread_and_is_seeded():
    model, ogm = _setup(seed=7)
    k = [0.5, 1.0, 1.0, 1.0]
    before, after = _grads_after(model, ogm, epoch=0, k=k)
    name = "encoders.t1.0.weight"
    noise = after[name] - 0.5 * before[name]
    assert noise.abs().sum() > 0
    assert noise.std().item() == pytest.approx(before[name].std().item(), rel=0.35)  # 108 samples
    assert torch.equal(after["final.weight"], before["final.weight"])  # outside the branches: untouched
    model2, ogm2 = _setup(seed=7)
    _, again = _grads_after(model2, ogm2, epoch=0, k=k)
    assert all(torch.equal(after[n], again[n]) for n in after)


def test_ge_noise_std_on_a_large_tensor():
    big = nn.Linear(200, 100)
    big.weight.grad = torch.randn(100, 200) * 3.0
    big.bias.grad = torch.zeros(100)
    model = nn.ModuleDict({"a": big, "b": nn.Linear(2, 2)})
    heads = {m: SegHead() for m in "ab"}
    trainer = HeadTrainer(
        heads, seg_loss, torch.optim.SGD([p for h in heads.values() for p in h.parameters()])
    )
    ogm = OGMGE(seed=0).bind(model, trainer, branches={"a": "a", "b": "b"})
    ogm.k = torch.tensor([0.25, 1.0], dtype=F64)
    g = big.weight.grad.clone()
    ogm.apply_magnitude(epoch=0)
    assert (big.weight.grad - 0.25 * g).std().item() == pytest.approx(g.std().item(), rel=0.03)
    assert torch.equal(big.bias.grad, torch.zeros(100))  # std 0: no noise


def test_state_dict_continues_the_noise(tmp_path):
    model, ogm = _setup(seed=3)
    _grads_after(model, ogm, epoch=0)
    torch.save(ogm.state_dict(), tmp_path / "ogm.pt")
    _, expected = _grads_after(model, ogm, epoch=0, k=[0.5, 1.0, 1.0, 1.0])
    ogm.load_state_dict(torch.load(tmp_path / "ogm.pt", weights_only=True))
    _, again = _grads_after(model, ogm, epoch=0, k=[0.5, 1.0, 1.0, 1.0])
    assert torch.equal(expected["encoders.t1.0.weight"], again["encoders.t1.0.weight"])


def test_observe_every_trains_the_heads_at_every_kth_call_and_keeps_k_between():
    model, ogm = _setup(noise=False, observe_every=3)
    heads = ogm.heads.heads
    snapshots, ks = [], []
    for step in range(7):
        x, y = seg_batch(seed=step)
        before = {m: [p.clone() for p in h.parameters()] for m, h in heads.items()}
        model(x)
        stats = ogm.observe(y)
        assert stats is ogm.stats and stats["k_t1"] == float(ogm.k[0])  # the last observation's
        ks.append(ogm.k.clone())
        after = {m: list(h.parameters()) for m, h in heads.items()}
        snapshots.append(any(not torch.equal(a, b) for m in heads for a, b in zip(before[m], after[m])))
        with pytest.raises(RuntimeError, match="no features captured"):  # dropped, observed or not
            _ = ogm.observer.tap.features
    assert snapshots == [True, False, False, True, False, False, True]  # calls 1, 4 and 7
    assert torch.equal(ks[1], ks[0]) and torch.equal(ks[2], ks[0]) and torch.equal(ks[5], ks[3])
    state = ogm.state_dict()
    assert state["calls"] == 7
    _, fresh = _setup(noise=False, observe_every=3)
    fresh.load_state_dict(state)
    assert fresh.cadence.calls == 7  # a resumed run keeps the phase: its next observation is call 10
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="observe_every must be an integer >= 1"):
            _setup(observe_every=bad)


def test_ogmge_checks_its_settings():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        OGMGE(alpha=-0.1)
    with pytest.raises(ValueError, match=r"magnitude must be one of \('grad', 'lr'\), got 'off'"):
        OGMGE(magnitude="off")  # OGM-GE always modulates
    model, ogm = _setup(alpha=0.5, continuous=True, end_epoch=None, seed=4, observe_every=2)
    assert ogm.settings == {
        "magnitude": "grad",
        "alpha": 0.5,
        "continuous": True,
        "noise": True,
        "start_epoch": 0,
        "end_epoch": None,
        "seed": 4,
        "observe_every": 2,
    }
    assert ogm.in_window(10_000)
    assert ogm.stat_names == [f"{s}_{m}" for s in ("s", "rho", "k", "head_loss") for m in MODALITIES]
