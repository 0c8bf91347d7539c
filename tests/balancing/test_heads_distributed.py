"""Under DDP every rank trains its own copy of the heads; HeadTrainer must keep the copies identical.

Two gloo ranks start from different heads (different seeds) and train on different local batches:
after a few steps their heads, and the final-layer gradients CGGM's direction term compares with,
must be identical, and equal to one process stepping on the mean of the two ranks' gradients.
"""

import torch
import torch.nn.functional as F
from torch import nn

from cggm_seg.balancing.head_trainer import HeadTrainer, flat_gradients

from .gloo import gloo_group, run_two_ranks
from .toy_nets import MODALITIES, SegHead

STEPS = 3


def _heads(seed: int) -> nn.ModuleDict:
    torch.manual_seed(seed)
    return nn.ModuleDict({m: SegHead() for m in MODALITIES})


def _batch(rank: int, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """This rank's local batch at ``step``: branch features (``1 x 4 x 4^3``) and a region target."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    features = {m: torch.randn(1, 4, 4, 4, 4, generator=g) for m in MODALITIES}
    target = (torch.rand(1, 3, 4, 4, 4, generator=g) > 0.5).float()
    return features, target


def _worker(rank: int, world: int, store: str, out: str) -> None:
    with gloo_group(rank, world, store):
        heads = _heads(seed=rank)  # different on each rank: the trainer starts them from rank 0's
        trainer = HeadTrainer(
            heads, F.binary_cross_entropy_with_logits, torch.optim.Adam(heads.parameters(), lr=0.05)
        )
        steps = [trainer.step(*_batch(rank, t)) for t in range(STEPS)]
        torch.save(
            {
                "heads": heads.state_dict(),
                "final_grads": [s.final_grads for s in steps],
                "scores": [{m: float(v) for m, v in s.scores.items()} for s in steps],
            },
            f"{out}/rank{rank}.pt",
        )


def _reference() -> tuple[nn.ModuleDict, list[dict[str, torch.Tensor]]]:
    """One process: rank 0's initial heads, each step on the mean of both ranks' gradients."""
    heads = _heads(seed=0)
    optimizer = torch.optim.Adam(heads.parameters(), lr=0.05)
    final_grads = []
    for t in range(STEPS):
        grads = []
        for rank in (0, 1):
            optimizer.zero_grad()
            features, target = _batch(rank, t)
            losses = [F.binary_cross_entropy_with_logits(heads[m](features[m]), target) for m in MODALITIES]
            sum(losses).backward()
            grads.append([p.grad.clone() for p in heads.parameters()])
        for p, g0, g1 in zip(heads.parameters(), *grads):
            p.grad = (g0 + g1) / 2
        final_grads.append({m: flat_gradients(heads[m].final) for m in MODALITIES})
        optimizer.step()
    return heads, final_grads


def test_ranks_with_different_batches_keep_identical_heads(tmp_path):
    r0, r1 = run_two_ranks("test_heads_distributed", tmp_path)
    for name, value in r0["heads"].items():
        assert torch.equal(value, r1["heads"][name]), name  # bit-identical copies
    for g0, g1 in zip(r0["final_grads"], r1["final_grads"]):
        assert all(torch.equal(g0[m], g1[m]) for m in MODALITIES)  # the same direction-term reference
    assert r0["scores"] != r1["scores"]  # each rank still scores its own batch (the tracker averages)
    heads, final_grads = _reference()
    for name, value in heads.state_dict().items():
        torch.testing.assert_close(r0["heads"][name], value, rtol=1e-5, atol=1e-6)
    for got, want in zip(r0["final_grads"], final_grads):
        for m in MODALITIES:
            torch.testing.assert_close(got[m], want[m], rtol=1e-5, atol=1e-6)
    assert not torch.equal(heads["t1"].final.weight, _heads(seed=0)["t1"].final.weight)  # they did learn
