import csv
import json

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SimpleInferer
from torch import nn

from cggm_seg.apps.brats import SegmentationTestReport, format_table


class RegionsFromImage(nn.Module):
    """Logits that reproduce the first three image channels as regions (a perfect or shifted model)."""

    def __init__(self, shift: int = 0) -> None:
        super().__init__()
        self.shift = shift
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x[:, :3], self.shift, dims=2) * 20 - 10 + self.dummy


def _cases(n: int = 2):
    out = []
    for i in range(n):
        label = torch.zeros(1, 3, 12, 12, 12)
        label[:, 1, 2:9, 2:9, 2:9] = 1  # WT
        label[:, 0, 3:7, 3:7, 3:7] = 1  # TC
        label[:, 2, 4:6, 4:6, 4:6] = 1  # ET
        image = MetaTensor(
            torch.cat([label, torch.zeros(1, 1, 12, 12, 12)], 1),
            affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])),
        )
        out.append({"image": image, "label": label, "case_id": [f"case{i}"]})
    return out


def test_perfect_model_scores_one_and_files_are_written(tmp_path, capsys):
    report = SegmentationTestReport(RegionsFromImage(), _cases(), SimpleInferer(), tmp_path, title="unit")
    result = report.run()
    summary = result["summary"]
    for region in ("tc", "wt", "et"):
        assert summary[f"dice_{region}"]["mean"] == pytest.approx(1.0)
        assert summary[f"hd95_{region}"]["mean"] == 0.0
    assert "no best-on-validation checkpoint" in result["source"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["num_cases"] == 2 and [c["case_id"] for c in saved["cases"]] == ["case0", "case1"]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == 2 and float(rows[0]["dice_wt"]) == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "unit - test set: 2 cases" in printed and "Dice (fused)" in printed


def test_shifted_model_hd95_uses_the_voxel_spacing(tmp_path):
    # a one-voxel shift along the first axis at 2 mm spacing: HD95 of 2 mm for every region
    result = SegmentationTestReport(RegionsFromImage(shift=1), _cases(1), SimpleInferer(), tmp_path).run()
    for region in ("tc", "wt", "et"):
        assert result["summary"][f"hd95_{region}"]["mean"] == pytest.approx(2.0)
        assert result["summary"][f"dice_{region}"]["mean"] < 1.0


def test_checkpoint_is_loaded(tmp_path):
    net = RegionsFromImage()
    torch.save({"network": {"dummy": torch.tensor([100.0])}}, tmp_path / "model.pt")
    result = SegmentationTestReport(
        net, _cases(1), SimpleInferer(), tmp_path, checkpoint=tmp_path / "model.pt"
    ).run()
    assert float(net.dummy) == 100.0  # every voxel now predicted inside every region
    assert "best-on-validation checkpoint" in result["source"]
    assert result["summary"]["dice_et"]["mean"] < 0.1


def test_format_table_rows():
    summary = {"dice_tc": {"mean": 0.5, "std": 0.1}, "head_dice_t1_tc": {"mean": 0.25, "std": 0.0}}
    table = format_table(summary, "title")
    lines = table.splitlines()
    assert lines[0] == "title"
    assert "0.5000 ± 0.1000" in lines[3] and lines[3].startswith("Dice (fused)")
    assert lines[4].startswith("Dice head t1") and "0.2500 ± 0.0000" in lines[4]


def test_no_hook_remains_on_the_network_after_a_report_with_heads(tmp_path):
    from cggm_seg.networks import MultiEncoderSegNet, make_heads

    torch.manual_seed(0)
    net = MultiEncoderSegNet(channels=(8, 8, 16), blocks_down=(0, 1, 1), blocks_up=(1, 0))
    heads = make_heads("segmentation", net)
    cases = [dict(c, image=MetaTensor(torch.randn(1, 4, 12, 12, 12))) for c in _cases(1)]
    result = SegmentationTestReport(net, cases, SimpleInferer(), tmp_path, heads=heads, hd95=False).run()
    assert "head_dice_t1_mean" in result["summary"]
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0


def test_a_bare_network_checkpoint_is_loaded(tmp_path):
    # CheckpointSaver writes a save_dict of one object (no heads) as its bare state dict
    net = RegionsFromImage()
    torch.save({"dummy": torch.tensor([100.0])}, tmp_path / "model.pt")
    SegmentationTestReport(net, _cases(1), SimpleInferer(), tmp_path, checkpoint=tmp_path / "model.pt").run()
    assert float(net.dummy.detach()) == 100.0
