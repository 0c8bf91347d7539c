"""Under DDP CGGM adds its direction term's gradient after the backward, which DDP has already
averaged over the ranks: that gradient must be averaged too, or the ranks' final layers drift apart.

Two gloo ranks train a DDP-wrapped toy network on different local batches with CGGM (magnitude and
direction on): after a few steps their weights must be identical, and so must what the direction
term added at each step.
"""

import torch
import torch.nn.functional as F
from torch import nn

from cggm_seg.balancing import CGGM, HeadTrainer

from .gloo import gloo_group, run_two_ranks
from .toy_nets import MODALITIES, SegHead, ToySegNet, seg_batch

STEPS = 3
seg_loss = F.binary_cross_entropy_with_logits


def _worker(rank: int, world: int, store: str, out: str) -> None:
    with gloo_group(rank, world, store):
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(ToySegNet())
        heads = nn.ModuleDict({m: SegHead() for m in MODALITIES})
        trainer = HeadTrainer(heads, seg_loss, torch.optim.SGD(heads.parameters(), lr=0.1))
        cggm = CGGM(lam=1.0).bind(model, trainer, loss_fn=seg_loss)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        added = []
        for step in range(STEPS):
            x, y = seg_batch(seed=100 * rank + step)  # a different local batch on each rank
            optimizer.zero_grad()
            seg_loss(model(x), y).backward()
            cggm.observe(y)
            cggm.step(optimizer)
            added.append([g.clone() for g in cggm.direction_grads])
        torch.save(
            {"model": model.module.state_dict(), "added": added, "L_gm": cggm.stats["L_gm"]},
            f"{out}/rank{rank}.pt",
        )


def test_ranks_keep_identical_weights_with_the_direction_term(tmp_path):
    r0, r1 = run_two_ranks("test_cggm_distributed", tmp_path)
    assert r0["L_gm"] != r1["L_gm"]  # each rank's own term, from its own batch ...
    for step0, step1 in zip(r0["added"], r1["added"]):
        assert any(g.abs().sum() > 0 for g in step0)
        for g0, g1 in zip(step0, step1):
            torch.testing.assert_close(g0, g1, rtol=0, atol=0)  # ... averaged to one gradient
    for name, w in r0["model"].items():
        torch.testing.assert_close(w, r1["model"][name], rtol=0, atol=0, msg=name)
