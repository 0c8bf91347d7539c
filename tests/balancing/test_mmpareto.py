"""MMPareto: the two-task min-norm weight, the combination by hand, and the step's two backward passes."""

from __future__ import annotations

import math

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.losses import DiceLoss

from cggm_seg.balancing import MMPareto, RobustTraining, min_norm_weight, pareto_combine, trainable_parameters
from cggm_seg.handlers import BalancingHandler

from .toy_nets import MODALITIES, SegHead, ToySegNet


def v(*x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_min_norm_weight_by_hand():
    # g = (1, 0), u = (-1, 1): a* = ((u - g) . u) / ||g - u||^2 = ((-2, 1) . (-1, 1)) / 5 = 0.6
    assert float(min_norm_weight(v(1, 0), v(-1, 1))) == pytest.approx(0.6)
    assert float(min_norm_weight(v(1, 0), v(1, 0))) == 0.5  # equal gradients
    assert float(min_norm_weight(v(1, 0), v(3, 0))) == 1.0  # clipped: all weight on the shorter


def test_pareto_combine_by_hand():
    # orthogonal (cos 0): equal weights (0.5, 0.5), norm 0.707 < ||g + u|| = 1.414 -> (1, 1); x 1.5
    h, cos = pareto_combine(v(1, 0), v(0, 1))
    assert float(cos) == 0.0 and torch.allclose(h, v(1.5, 1.5))
    # conflicting (cos -0.707): 0.6 g + 0.4 u = (0.2, 0.4), rescaled to ||g + u|| = 1, x 1.5
    h, cos = pareto_combine(v(1, 0), v(-1, 1))
    assert float(cos) == pytest.approx(-1 / math.sqrt(2))
    assert torch.allclose(h, 1.5 * v(0.2, 0.4) / math.sqrt(0.2), atol=1e-12)
    # aligned: the mean (1.5, 0) is rescaled to the sum's norm 3
    h, _ = pareto_combine(v(1, 0), v(2, 0), scale=1.0)
    assert torch.allclose(h, v(3, 0))


def test_mmpareto_refuses_a_bad_scale_and_a_step_without_unimodal_gradients():
    with pytest.raises(ValueError, match="scale"):
        MMPareto(scale=0)
    with pytest.raises(RuntimeError, match="--recipe sep"):
        MMPareto().after_backward()
    with pytest.raises(ValueError, match="sep_weight > 0"):
        RobustTraining(sampler="none", feature_masking=False).iteration(None, MMPareto())


def test_mmpareto_step_sets_each_encoders_gradient_to_the_combination():
    torch.manual_seed(0)
    net = ToySegNet()
    heads = torch.nn.ModuleDict({m: SegHead() for m in MODALITIES})
    method = MMPareto()
    recipe = RobustTraining(sampler="none", feature_masking=False, sep_weight=1.0)
    step = recipe.iteration(heads, method)
    data = [{"image": torch.randn(1, 4, 8, 8, 8), "label": (torch.rand(1, 3, 8, 8, 8) > 0.5).float()}]
    loss = DiceLoss(sigmoid=True)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(
            trainable_parameters(net, heads), lr=0.0
        ),  # lr 0: the gradients stay readable
        loss_function=loss,
        iteration_update=step,
        train_handlers=[BalancingHandler(method, {m: SegHead() for m in MODALITIES})],
    )
    trainer.run()
    # the same two gradients by hand, on the same batch and weights
    x, y = data[0]["image"], data[0]["label"]
    params = {m: list(net.encoders[m].parameters()) for m in MODALITIES}
    features = {}
    hooks = [
        net.encoders[m].register_forward_hook(lambda mod, a, out, m=m: features.__setitem__(m, out))
        for m in MODALITIES
    ]
    fused = loss(net(x), y)
    for h in hooks:
        h.remove()
    for m in MODALITIES:
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(fused, params[m], retain_graph=True)])
        u = torch.cat(
            [
                t.reshape(-1)
                for t in torch.autograd.grad(loss(heads[m](features[m]), y), params[m], retain_graph=True)
            ]
        )
        expected, cos = pareto_combine(g, u)
        got = torch.cat([p.grad.reshape(-1) for p in params[m]])
        assert torch.allclose(got.double(), expected, atol=1e-5), m
        assert method.cosines[m] == pytest.approx(float(cos), abs=1e-5)
    assert math.isfinite(trainer.state.cos_t1)
