"""The example of docs/reuse.md on a network cggm_seg did not write (four MONAI UNets fused late), run as it
is, and the same network with CGGM and OGM-GE under SGD and Adam."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.losses import DiceLoss

from cggm_seg.balancing import branch_param_groups
from cggm_seg.handlers import CGGMHandler, OGMGEHandler
from cggm_seg.networks import SegmentationHead, build_heads

README = Path(__file__).resolve().parents[2] / "docs" / "reuse.md"


def _readme_example() -> str:
    section = README.read_text().split("## Balancing your own trainer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_the_readme_example_runs_as_written(capsys):
    namespace: dict = {}
    exec(compile(_readme_example(), "docs/reuse.md", "exec"), namespace)
    handler = namespace["handler"]
    assert len(handler.history) == 4
    assert all(f"B_{s}" in handler.history[-1] for s in ("t1", "t1ce", "t2", "flair"))
    assert "B_t1" in capsys.readouterr().out
    # the heads were built from the branches' outputs, final layers shaped like `fuse`
    for head in namespace["heads"].values():
        assert isinstance(head, SegmentationHead)
        assert head.final.weight.shape == namespace["net"].fuse.weight.shape


def test_cggm_seg_code_of_the_example_is_at_most_ten_lines():
    code = _readme_example()
    lines = [
        line
        for line in code.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and ("cggm_seg" in line or re.search(
            r"\b(build_heads|CGGMHandler|branch_param_groups|branches|handler)\b", line
        ))
    ]  # fmt: skip
    assert len(lines) <= 10, lines


@pytest.mark.parametrize("method", ["cggm", "ogmge"])
@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_both_methods_under_sgd_and_adam_on_the_foreign_network(method, optimizer_name):
    namespace: dict = {}
    code = _readme_example().split("net = LateFusionUNets()")[0]  # the class only
    exec(compile(code, "docs/reuse.md", "exec"), namespace)
    torch.manual_seed(0)
    net = namespace["LateFusionUNets"]()
    branches = {s: f"unets.{s}" for s in net.sequences}
    heads = build_heads(net, torch.zeros(1, 4, 16, 16, 16), "segmentation", branches, final="fuse")
    magnitude = "lr" if optimizer_name == "adam" else "grad"
    if method == "cggm":
        handler = CGGMHandler(
            heads, branches=branches, final="fuse", magnitude=magnitude, preset="guarded", tau=0.0
        )
    else:
        handler = OGMGEHandler(
            heads,
            branches=branches,
            magnitude=magnitude,
            end_epoch=None,
            score="region_true_class_probability",
        )
    if optimizer_name == "adam":
        optimizer = torch.optim.Adam(branch_param_groups(net, branches, lr=1e-3))
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    data = [
        {
            "image": torch.randn(2, 4, 16, 16, 16, generator=g),
            "label": (torch.rand(2, 3, 16, 16, 16, generator=g) > 0.7).float(),
        }
        for _ in range(2)
    ]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=data, network=net,
        optimizer=optimizer, loss_function=DiceLoss(sigmoid=True), train_handlers=[handler],
    )  # fmt: skip
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    trainer.run()
    assert len(handler.history) == 4
    coefficient = "B_t1" if method == "cggm" else "k_t1"
    assert all(coefficient in h for h in handler.history)
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(g["lr"] == 1e-3 for g in optimizer.param_groups) or optimizer_name == "sgd"


def test_build_heads_says_what_it_cannot_match():
    from torch import nn

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(3, 4)
            self.out = nn.Conv3d(8, 3, 3)

        def forward(self, x):
            return self.a(x) + self.b(x)

    with pytest.raises(ValueError, match="need a 1x1x1 nn.Conv3d final layer"):
        build_heads(Odd(), torch.zeros(1, 3), "segmentation", {"a": "a", "b": "b"}, final="out")
    with pytest.raises(ValueError, match="need an nn.Linear final layer"):
        build_heads(Odd(), torch.zeros(1, 3), "classification", {"a": "a", "b": "b"}, final="out")
    vector_branches = Odd()
    vector_branches.out = nn.Conv3d(8, 3, 1)  # a segmentation final layer on vector branches
    with pytest.raises(ValueError, match=r"branch 'a' returns \[\[2, 4\]\]; segmentation heads need"):
        build_heads(vector_branches, torch.zeros(2, 3), "segmentation", {"a": "a", "b": "b"}, final="out")


def test_build_heads_for_a_branch_of_several_modules_trains():
    from monai.losses import DiceLoss
    from torch import nn

    from cggm_seg.balancing import HeadTrainer
    from cggm_seg.balancing.observer import HeadObserver

    class TwoStage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a1, self.a2 = nn.Conv3d(1, 4, 3, padding=1), nn.Conv3d(4, 6, 3, stride=2, padding=1)
            self.b1, self.b2 = nn.Conv3d(1, 4, 3, padding=1), nn.Conv3d(4, 6, 3, stride=2, padding=1)
            self.out = nn.Conv3d(20, 3, 1)

        def forward(self, x):
            fa, fb = self.a1(x[:, :1]), self.b1(x[:, 1:])
            ga, gb = self.a2(fa), self.b2(fb)
            up = nn.functional.interpolate(torch.cat([ga, gb], 1), size=x.shape[2:])
            return self.out(torch.cat([fa, fb, up], 1)[:, :20])

    net = TwoStage()
    branches = {"a": ["a1", "a2"], "b": ["b1", "b2"]}
    full = build_heads(net, torch.zeros(1, 2, 8, 8, 8), "segmentation", branches, final="out", level=0)
    assert [p.in_channels for p in full["a"].projections] == [4, 6]  # both modules' maps, fine to coarse
    heads = build_heads(net, torch.zeros(1, 2, 8, 8, 8), "segmentation", branches, final="out")
    assert heads["a"].level == 1 and [p.in_channels for p in heads["a"].projections] == [6]
    params = [p for h in heads.values() for p in h.parameters()]
    trainer = HeadTrainer(heads, DiceLoss(sigmoid=True), torch.optim.SGD(params, lr=0.1))
    with HeadObserver(net, trainer, branches) as observer:
        net(torch.randn(2, 2, 8, 8, 8))
        seen = observer.observe((torch.rand(2, 3, 8, 8, 8) > 0.5).float())
    assert seen.scores.shape == (2,)
