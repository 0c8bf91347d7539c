"""Under autocast the heads and CGGM's direction term run in float32: a CPU bfloat16 test."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.losses import DiceLoss

from cggm_seg.balancing import CGGM, FeatureTap, HeadTrainer
from cggm_seg.networks import MultiEncoderSegNet, make_heads

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def _setup():
    torch.manual_seed(0)
    net = MultiEncoderSegNet(
        ["t1", "t1ce", "t2", "flair"], channels=(8, 16, 32), blocks_down=(0, 1, 1), blocks_up=(1, 0)
    )
    heads = make_heads("segmentation", net)
    x = torch.randn(2, 4, 16, 16, 16)
    y = (torch.rand(2, 3, 16, 16, 16) > 0.7).float()
    return net, heads, x, y


def _trainer(heads):
    loss = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)
    return HeadTrainer(heads, loss, torch.optim.SGD(heads.parameters(), lr=0.1))


def _upcast(features):
    return {m: [f.float() for f in maps] for m, maps in features.items()}


def test_heads_run_in_float32_inside_a_bfloat16_autocast():
    net, heads, x, y = _setup()
    tap = FeatureTap(net)
    with torch.autocast(**BF16):
        net(x)
    low = tap.features
    assert all(f.dtype == torch.bfloat16 for maps in low.values() for f in maps)  # what AMP gives the heads
    with torch.no_grad():
        net(x)  # float32 features of the same batch
    tap.remove()

    heads_amp, heads_plain, heads_fp32 = heads, copy.deepcopy(heads), copy.deepcopy(heads)
    with torch.autocast(**BF16):
        amp = _trainer(heads_amp).step(low, y)
    plain = _trainer(heads_plain).step(_upcast(low), y)  # the same features, no autocast at all
    for m in heads:
        # bit-equal: inside the autocast region the heads computed exactly what they do outside it
        assert torch.equal(amp.scores[m], plain.scores[m])
        assert torch.equal(amp.final_grads[m], plain.final_grads[m])
        assert amp.final_grads[m].dtype == torch.float32
        for p_amp, p_plain in zip(heads_amp[m].parameters(), heads_plain[m].parameters()):
            assert p_amp.dtype == torch.float32 and torch.equal(p_amp, p_plain)

    # against float32 features from a float32 forward: only the encoders' bfloat16 rounding differs
    tap = FeatureTap(net)
    net(x)
    full = _trainer(heads_fp32).step(tap.features, y)
    tap.remove()
    for m in heads:
        assert amp.scores[m].item() == pytest.approx(full.scores[m].item(), abs=1e-2)
        cosine = torch.nn.functional.cosine_similarity(amp.final_grads[m], full.final_grads[m], dim=0)
        assert cosine > 0.99


def test_direction_term_runs_in_float32_inside_autocast():
    net, heads, x, y = _setup()
    loss_fn = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)
    cggm = CGGM().bind(net, _trainer(heads), loss_fn=loss_fn)
    with torch.autocast(**BF16):
        out = net(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        cggm.observe(y)
        assert cggm.after_backward()  # still inside autocast: the term leaves it
    final_input = cggm.observer.tap.final_input
    assert final_input is None or final_input.dtype == torch.bfloat16  # the tap was cleared, or bf16
    assert loss.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in cggm.direction_grads)
    cosines = [cggm.stats[f"cos_{m}"] for m in cggm.modalities]
    assert all(-1.0 <= c <= 1.0 for c in cosines)
    # the same step's cosines recomputed by hand in float32 from a bf16 forward's final input
    net2, heads2, _, _ = _setup()
    cggm2 = CGGM().bind(net2, _trainer(heads2), loss_fn=loss_fn)
    with torch.autocast(**BF16):
        net2(x)
    step = cggm2.observer.observe(y)
    params = list(net2.final.parameters())
    fused = torch.autograd.grad(loss_fn(net2.final(cggm2.observer.final_input.float()), y).mean(), params)
    fused_vec = torch.cat([g.reshape(-1) for g in fused])
    for m, c in zip(cggm.modalities, cosines):
        expected = torch.nn.functional.cosine_similarity(fused_vec, step.step.final_grads[m], dim=0)
        assert c == pytest.approx(expected.item(), abs=1e-6)
