import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cggm_seg.balancing.branches import FeatureTap
from cggm_seg.balancing.head_trainer import (
    HeadOptions,
    HeadTrainer,
    as_head_trainer,
    check_sublattice_heads,
    flat_gradients,
)
from cggm_seg.balancing.scores import get_score

from .toy_nets import MODALITIES, SegHead, ToySegNet, seg_batch

BCE = F.binary_cross_entropy_with_logits


def _heads() -> nn.ModuleDict:
    torch.manual_seed(1)
    return nn.ModuleDict({m: SegHead() for m in MODALITIES})


def test_heads_train_on_detached_features_and_report_pre_step_gradients():
    model, heads = ToySegNet(), _heads()
    before = copy.deepcopy(heads)
    trainer = HeadTrainer(
        heads, F.binary_cross_entropy_with_logits, torch.optim.SGD(heads.parameters(), lr=0.1)
    )
    tap = FeatureTap(model)
    x, y = seg_batch()
    model(x)
    step = trainer.step(tap.features, y)
    assert all(p.grad is None for p in model.parameters())  # the encoders are only observed
    for m in MODALITIES:
        reference = before[m]
        pred = reference(tap.features[m])
        F.binary_cross_entropy_with_logits(pred, y).backward()
        torch.testing.assert_close(step.final_grads[m], flat_gradients(reference.final))
        torch.testing.assert_close(
            step.final_weights[m], torch.cat([p.reshape(-1) for p in reference.final.parameters()])
        )
        assert step.final_grads[m].shape == (3 * 6 + 3,)
        torch.testing.assert_close(step.scores[m], trainer.score_fn(pred.detach(), y))  # before the update
        assert step.losses[m].item() == pytest.approx(F.binary_cross_entropy_with_logits(pred, y).item())
        assert not torch.equal(heads[m].final.weight, reference.final.weight)  # the heads did learn


def test_head_trainer_checks_heads():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="no final layer"):
        HeadTrainer({"a": SegHead(), "b": nn.Conv3d(4, 3, 1)}, F.mse_loss, opt)
    shared = SegHead()
    with pytest.raises(ValueError, match="share parameters"):
        HeadTrainer({"a": shared, "b": shared}, F.mse_loss, opt)
    with pytest.raises(ValueError, match="unknown score"):
        HeadTrainer({"a": SegHead(), "b": SegHead()}, F.mse_loss, opt, score_fn="dice")


def test_pool_target_by_hand():
    from cggm_seg.balancing.head_trainer import pool_target

    target = torch.zeros(1, 1, 2, 2, 4)
    target[0, 0, :, :, 0] = 1.0  # the first 2x2x2 block (w = 0, 1): its w = 0 half, 4 of 8 voxels
    target[0, 0, 0, 0, 1] = 1.0  # plus one more voxel of it: 5 of 8
    target[0, 0, :, :, 2:] = 1.0  # the second block: all inside
    pooled = pool_target(target, (1, 1, 2))
    torch.testing.assert_close(pooled, torch.tensor([0.625, 1.0]).view(1, 1, 1, 1, 2))
    torch.testing.assert_close(pool_target(target.bool(), (1, 1, 2)), pooled)  # masks averaged as floats
    classes = torch.arange(16).view(1, 1, 2, 2, 4)  # class indices: each block's first voxel
    assert pool_target(classes, (1, 1, 2)).flatten().tolist() == [0, 2]
    assert pool_target(target, (2, 2, 4)) is target
    with pytest.raises(ValueError, match=r"cannot pool a target of spatial size \[2, 2, 4\] to \[1, 1, 3\]"):
        pool_target(target, (1, 1, 3))


def test_coarse_heads_learn_from_the_pooled_target():
    from cggm_seg.balancing.head_trainer import pool_target
    from cggm_seg.networks import SegmentationHead

    torch.manual_seed(0)
    heads = nn.ModuleDict({m: SegmentationHead((2, 4), hidden=3, level=1) for m in ("a", "b")})
    before = copy.deepcopy(heads)
    trainer = HeadTrainer(heads, BCE, torch.optim.SGD(heads.parameters(), lr=0.1))
    features = {m: [torch.randn(2, 2, 8, 8, 8), torch.randn(2, 4, 4, 4, 4)] for m in heads}
    target = (torch.rand(2, 3, 8, 8, 8) > 0.5).float()
    step = trainer.step(features, target)
    coarse = pool_target(target, (4, 4, 4))
    assert 0 < coarse.min() or coarse.max() < 1  # soft labels: fractions of each 2x2x2 block
    for m in heads:
        pred = before[m](features[m])
        assert pred.shape == (2, 3, 4, 4, 4)
        loss = F.binary_cross_entropy_with_logits(pred, coarse)
        assert step.losses[m].item() == pytest.approx(loss.item())
        torch.testing.assert_close(step.scores[m], trainer.score_fn(pred.detach(), coarse))
        loss.backward()
        torch.testing.assert_close(step.final_grads[m], flat_gradients(before[m].final))


def test_a_full_resolution_head_of_the_wrong_size_still_fails():
    from cggm_seg.networks import SegmentationHead

    heads = nn.ModuleDict({m: SegmentationHead((2, 4), hidden=3, level=0, stride=1) for m in ("a", "b")})
    trainer = HeadTrainer(heads, BCE, torch.optim.SGD(heads.parameters(), lr=0.1))
    features = {m: [torch.randn(1, 2, 4, 4, 4), torch.randn(1, 4, 2, 2, 2)] for m in heads}
    with pytest.raises(ValueError, match="must return logits at the label's spatial size"):
        trainer.step(features, torch.zeros(1, 3, 8, 8, 8))
    coarse = nn.ModuleDict({m: SegmentationHead((2, 4, 8), hidden=3, level=1) for m in ("a", "b")})
    trainer = HeadTrainer(coarse, BCE, torch.optim.SGD(coarse.parameters(), lr=0.1))
    odd_maps = [torch.randn(1, 2, 6, 6, 6), torch.randn(1, 4, 3, 3, 3), torch.randn(1, 8, 2, 2, 2)]
    odd = {m: odd_maps for m in coarse}
    with pytest.raises(ValueError, match=r"head 'a' \(level 1\): cannot pool a target"):
        trainer.step(odd, torch.zeros(1, 3, 8, 8, 8))


def test_sublattice_offset_and_slice_by_hand():
    from cggm_seg.balancing.head_trainer import sublattice_of, sublattice_offset

    assert [sublattice_offset(t, 3) for t in (0, 1, 2, 5, 7, 8, 13)] == [
        (0, 0, 0),
        (1, 0, 0),
        (0, 1, 0),
        (1, 0, 1),
        (1, 1, 1),
        (0, 0, 0),
        (1, 0, 1),
    ]
    assert sublattice_offset(3, 2) == (1, 1)
    target = torch.arange(2 * 4 * 2 * 2).view(1, 2, 4, 2, 2)
    sub = sublattice_of(target, (1, 0, 1))
    # channel 0 holds 0..15 in (d, h, w) order: d in {1, 3}, h = 0, w = 1 -> 4 * 1 + 1 = 5 and 4 * 3 + 1 = 13
    assert sub[0, 0].flatten().tolist() == [5, 13]
    assert sub[0, 1].flatten().tolist() == [21, 29]
    with pytest.raises(ValueError, match="needs a dense target B x C x S x S x S with even sizes"):
        sublattice_of(torch.zeros(1, 3, 4, 4, 5), (0, 0, 0))
    with pytest.raises(ValueError, match="with even sizes, got a target of shape \\[4, 3\\]"):
        sublattice_of(torch.zeros(4, 3), (0, 0, 0))


@pytest.mark.parametrize("level", [0, 1])
def test_sublattice_heads_train_and_score_on_one_voxel_in_eight(level):
    """sublattice=True: step t's loss, score and step are the head's on the voxels o + 2u of its
    output grid (full resolution at level 0, half at level 1), o the binary digits of t, against the
    target there (pooled to the head's grid at level 1)."""
    from cggm_seg.balancing.head_trainer import pool_target
    from cggm_seg.networks import SegmentationHead

    torch.manual_seed(0)
    heads = nn.ModuleDict({m: SegmentationHead((2, 4, 6), hidden=3, level=level) for m in ("a", "b")})
    reference = copy.deepcopy(heads)
    trainer = HeadTrainer(heads, BCE, torch.optim.SGD(heads.parameters(), lr=0.1), sublattice=True)
    reference_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    target = (torch.rand(2, 3, 16, 16, 16) > 0.5).float()
    grid = 16 >> level
    on_grid = pool_target(target, (grid,) * 3)
    for t in range(9):
        features = {
            m: [torch.randn(2, 2, 16, 16, 16), torch.randn(2, 4, 8, 8, 8), torch.randn(2, 6, 4, 4, 4)]
            for m in heads
        }
        offset = ((t >> 0) & 1, (t >> 1) & 1, (t >> 2) & 1)
        assert trainer.steps == t and trainer.offset(3) == offset
        index = (slice(None), slice(None), *(slice(o, None, 2) for o in offset))
        step = trainer.step(features, target)
        reference_opt.zero_grad()
        for m in heads:
            logits = reference[m](features[m])[index]  # the head on its whole grid, sliced afterwards
            assert logits.shape == (2, 3, *(grid // 2,) * 3)
            loss = BCE(logits, on_grid[index])
            assert step.losses[m].item() == pytest.approx(loss.item(), abs=1e-6)
            torch.testing.assert_close(step.scores[m], trainer.score_fn(logits.detach(), on_grid[index]))
            loss.backward()
            torch.testing.assert_close(step.final_grads[m], flat_gradients(reference[m].final))
        reference_opt.step()
        for got, expected in zip(heads.parameters(), reference.parameters()):
            torch.testing.assert_close(got, expected)
    assert trainer.steps == 9


def test_sublattice_heads_of_several_levels_in_one_trainer():
    """Heads at levels 0, 1 and 2 in one trainer: each trains on the sub-lattice of its own grid
    (the label pooled by 1, 2 and 4), against the whole head sliced afterwards."""
    from cggm_seg.balancing.head_trainer import pool_target
    from cggm_seg.networks import SegmentationHead

    torch.manual_seed(0)
    heads = nn.ModuleDict(
        {m: SegmentationHead((2, 4, 6), hidden=3, level=lvl) for m, lvl in zip("abc", (0, 1, 2))}
    )
    reference = copy.deepcopy(heads)
    trainer = HeadTrainer(heads, BCE, torch.optim.SGD(heads.parameters(), lr=0.1), sublattice=True)
    target = (torch.rand(1, 3, 16, 16, 8) > 0.5).float()
    features = {
        m: [torch.randn(1, 2, 16, 16, 8), torch.randn(1, 4, 8, 8, 4), torch.randn(1, 6, 4, 4, 2)]
        for m in heads
    }
    for t in range(3):
        offset = ((t >> 0) & 1, (t >> 1) & 1, (t >> 2) & 1)
        index = (slice(None), slice(None), *(slice(o, None, 2) for o in offset))
        step = trainer.step(features, target)
        for m, level in zip("abc", (0, 1, 2)):
            grid = [s >> level for s in target.shape[2:]]
            logits = reference[m](features[m])[index]
            assert list(logits.shape[2:]) == [g // 2 for g in grid]
            loss = BCE(logits, pool_target(target, grid)[index])
            assert step.losses[m].item() == pytest.approx(loss.item(), abs=1e-6)
            reference[m].zero_grad()
            loss.backward()
            torch.testing.assert_close(step.final_grads[m], flat_gradients(reference[m].final))
            with torch.no_grad():  # follow the trainer's SGD step
                for p in reference[m].parameters():
                    p -= 0.1 * p.grad
    # a full-resolution head that predicts the wrong size still fails, and is not pooled to fit
    wrong = nn.ModuleDict({m: SegmentationHead((2, 4), hidden=3) for m in ("a", "b")})
    trainer = HeadTrainer(wrong, BCE, torch.optim.SGD(wrong.parameters(), lr=0.1), sublattice=True)
    small = {m: [torch.randn(1, 2, 8, 8, 8), torch.randn(1, 4, 4, 4, 4)] for m in wrong}
    with pytest.raises(ValueError, match="must return logits at the label's spatial size"):
        trainer.step(small, torch.zeros(1, 3, 16, 16, 16))
    assert trainer.steps == 0


def test_pool_sublattice_by_hand():
    """The pooled target's voxels offset + 2u, from their blocks only: block means (masks), first
    voxels (class indices); the full-resolution case is sublattice_of."""
    from cggm_seg.balancing.head_trainer import pool_sublattice, pool_target, sublattice_of

    # 1D, 8 voxels pooled by 2 to 4 (block means 0.5, 2.5, 4.5, 6.5); offset 1 keeps coarse voxels 1 and 3
    line = torch.arange(8.0).view(1, 1, 8)
    torch.testing.assert_close(pool_sublattice(line, (4,), (1,)), torch.tensor([[[2.5, 6.5]]]))
    torch.testing.assert_close(pool_sublattice(line, (4,), (0,)), torch.tensor([[[0.5, 4.5]]]))
    # integer labels take each block's first voxel: blocks start at 0, 2, 4, 6 -> offset 1 keeps 2 and 6
    assert pool_sublattice(torch.arange(8).view(1, 1, 8), (4,), (1,)).tolist() == [[[2, 6]]]
    # a 2 x 2 mask pooled by 2 in 2D: the block [[1, 0], [1, 1]] at coarse voxel (1, 0) has mean 0.75
    mask = torch.zeros(1, 1, 4, 8, dtype=torch.bool)
    mask[0, 0, 2:4, 0:2] = torch.tensor([[True, False], [True, True]])
    assert pool_sublattice(mask, (2, 4), (1, 0)).tolist() == [[[[0.75, 0.0]]]]
    torch.manual_seed(0)
    target = (torch.rand(2, 3, 16, 8, 8) > 0.5).float()
    labels = torch.randint(0, 4, (2, 1, 16, 8, 8))
    for offset in [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]:
        # masks as floats and booleans, class indices; the same factor in every dimension or not (2, 4, 2)
        for dense in (target, target.bool(), labels):
            for size in [(8, 4, 4), (4, 2, 2), (8, 2, 4)]:
                expected = sublattice_of(pool_target(dense, size), offset)
                got = pool_sublattice(dense, size, offset)
                assert got.dtype == expected.dtype and got.shape == expected.shape
                torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert (
            pool_sublattice(target, (16, 8, 8), offset).data_ptr() == sublattice_of(target, offset).data_ptr()
        )
    for bad in [(0, 0, 2), (0, -1, 0), (0, 0.5, 0), (0, 0)]:
        with pytest.raises(ValueError, match="offset must be one 0 or 1 per spatial dimension"):
            pool_sublattice(target, (8, 4, 4), bad)
        with pytest.raises(ValueError, match="offset must be one 0 or 1 per spatial dimension"):
            sublattice_of(target, bad)
    with pytest.raises(
        ValueError, match="cannot pool a target of spatial size \\[16, 8, 8\\] to \\[6, 4, 4\\]"
    ):
        pool_sublattice(target, (6, 4, 4), (0, 0, 0))
    with pytest.raises(
        ValueError,
        match="needs a coarse grid of even sizes, got \\[8, 4, 1\\]",
    ):
        pool_sublattice(torch.zeros(1, 3, 16, 8, 2), (8, 4, 1), (0, 0, 0))


def test_sublattice_needs_heads_that_compute_it_exactly():
    from cggm_seg.networks import SegmentationHead

    smooth = nn.ModuleDict(
        {m: SegmentationHead((2, 4), hidden=3, level=1, interp_mode="trilinear") for m in ("a", "b")}
    )
    with pytest.raises(
        ValueError,
        match="head 'a' \\(SegmentationHead, level 1, stride 1, interp_mode 'trilinear'\\) cannot be",
    ):
        HeadTrainer(smooth, BCE, torch.optim.SGD(smooth.parameters(), lr=0.1), sublattice=True)
    strided = nn.ModuleDict({m: SegmentationHead((2, 4), hidden=3, stride=2) for m in ("a", "b")})
    with pytest.raises(
        ValueError, match="head 'a' \\(SegmentationHead, level 0, stride 2, interp_mode 'nearest'\\)"
    ):
        HeadTrainer(strided, BCE, torch.optim.SGD(strided.parameters(), lr=0.1), sublattice=True)
    with pytest.raises(ValueError, match="head 't1' \\(SegHead\\) cannot be"):
        HeadTrainer(_heads(), BCE, torch.optim.SGD(_heads().parameters(), lr=0.1), sublattice=True)
    coarse = nn.ModuleDict({m: SegmentationHead((2, 4), hidden=3, level=1) for m in ("a", "b")})
    check_sublattice_heads(coarse)  # nearest-neighbour heads at any level compute it exactly
    with pytest.raises(ValueError, match="sublattice=True trains segmentation heads on a sub-lattice"):
        check_sublattice_heads(smooth)


def test_sublattice_refuses_odd_sizes_before_any_step():
    from cggm_seg.networks import SegmentationHead

    heads = nn.ModuleDict({m: SegmentationHead((2, 4), hidden=3) for m in ("a", "b")})
    trainer = HeadTrainer(heads, BCE, torch.optim.SGD(heads.parameters(), lr=0.1), sublattice=True)
    features = {m: [torch.randn(1, 2, 8, 8, 8), torch.randn(1, 4, 4, 4, 4)] for m in heads}
    with pytest.raises(ValueError, match="with even sizes, got a target of shape \\[1, 3, 8, 8, 7\\]"):
        trainer.step(features, torch.zeros(1, 3, 8, 8, 7))
    assert trainer.steps == 0  # a step that failed does not count
    coarse = nn.ModuleDict({m: SegmentationHead((2, 4, 6), hidden=3, level=1) for m in ("a", "b")})
    trainer = HeadTrainer(coarse, BCE, torch.optim.SGD(coarse.parameters(), lr=0.1), sublattice=True)
    odd = {
        m: [torch.randn(1, 2, 10, 10, 10), torch.randn(1, 4, 5, 5, 5), torch.randn(1, 6, 3, 3, 3)]
        for m in coarse
    }
    with pytest.raises(
        ValueError, match="head 'a': a sub-lattice of step 2 needs even sizes; the output grid's \\(map 1\\)"
    ):
        trainer.step(odd, torch.zeros(1, 3, 10, 10, 10))  # the label is even, the heads' grid (5^3) is not
    assert trainer.steps == 0


def test_head_options_build_a_trainer_with_adam_and_the_methods_default_score():
    heads = _heads()
    trainer = HeadOptions(lr=0.01).trainer(heads, BCE, default_score="region_true_class_probability")
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.01]
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in heads.parameters()}
    assert trainer.score_fn is get_score("region_true_class_probability")  # score None: the method's
    assert trainer.loss_fn is BCE and trainer.modalities == MODALITIES and not trainer.sublattice
    plain = {m: SegHead() for m in ("a", "b")}  # a plain dict of heads works too
    own = torch.optim.SGD([p for h in plain.values() for p in h.parameters()], lr=0.1)
    trainer = HeadOptions(score="accuracy").trainer(plain, BCE, "soft_dice", optimizer=own)
    assert trainer.optimizer is own and trainer.score_fn is get_score("accuracy")


def test_head_options_check_their_values():
    with pytest.raises(ValueError, match="unknown score 'dice'"):
        HeadOptions(score="dice")
    with pytest.raises(ValueError, match="the heads' lr must be > 0, got 0.0"):
        HeadOptions(lr=0.0)
    for level in (-1, 0.5):
        with pytest.raises(ValueError, match="the heads' level must be None or an integer >= 0"):
            HeadOptions(level=level)
    with pytest.raises(ValueError, match="sublattice must be True or False, got 'yes'"):
        HeadOptions(sublattice="yes")
    with pytest.raises(ValueError, match="head 't1' \\(SegHead\\) cannot be"):
        HeadOptions(sublattice=True).trainer(_heads(), BCE, "soft_dice")  # reaches the trainer


def test_as_head_trainer_takes_a_trainer_as_is_and_wraps_head_modules():
    heads = _heads()
    trainer = HeadTrainer(heads, BCE, torch.optim.SGD(heads.parameters(), lr=0.1))
    assert as_head_trainer(trainer, None, HeadOptions(), "soft_dice") is trainer
    wrapped = as_head_trainer(heads, BCE, HeadOptions(lr=0.5), "soft_dice")
    assert isinstance(wrapped, HeadTrainer) and wrapped.heads == dict(heads.items())
    assert wrapped.optimizer.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="pass loss_fn="):
        as_head_trainer(heads, None, HeadOptions(), "soft_dice")
    with pytest.raises(ValueError, match="heads must be a HeadTrainer or modality -> head modules"):
        as_head_trainer({"a": "not a module", "b": SegHead()}, BCE, HeadOptions(), "soft_dice")
    with pytest.raises(ValueError, match="got list"):
        as_head_trainer([SegHead(), SegHead()], BCE, HeadOptions(), "soft_dice")
