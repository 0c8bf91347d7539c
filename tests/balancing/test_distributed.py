"""Two gloo ranks with different batches must end with identical B (scores averaged over ranks)."""

import torch

from cggm_seg.balancing.ogmge import discrepancy_ratios, ogm_coefficients
from cggm_seg.balancing.tracker import BalanceTracker

from .gloo import gloo_group, run_two_ranks

MODALITIES = ("t1", "t2", "flair")
SCORES = {  # per rank: the heads' scores on that rank's local batches
    0: [(0.50, 0.40, 0.30), (0.55, 0.42, 0.31), (0.58, 0.47, 0.33), (0.61, 0.48, 0.36)],
    1: [(0.30, 0.40, 0.50), (0.31, 0.45, 0.52), (0.33, 0.46, 0.60), (0.34, 0.50, 0.61)],
}


def _run(rows):
    tracker = BalanceTracker(MODALITIES, ema=0.5, tau=0.0, preset="guarded")
    return [tracker.update(dict(zip(MODALITIES, row))).tolist() for row in rows]


def _worker(rank: int, world: int, store: str, out: str) -> None:
    with gloo_group(rank, world, store):
        tracker_b = _run(SCORES[rank])
        s = torch.tensor(SCORES[rank][-1], dtype=torch.float64)
        from cggm_seg.balancing.distributed import mean_over_ranks

        k = ogm_coefficients(discrepancy_ratios(mean_over_ranks(s)), alpha=0.8).tolist()
        torch.save({"B": tracker_b, "k": k}, f"{out}/rank{rank}.pt")


def test_ranks_with_different_batches_get_identical_b(tmp_path):
    r0, r1 = run_two_ranks("test_distributed", tmp_path)
    assert r0 == r1
    mean_rows = [tuple((a + b) / 2 for a, b in zip(x, y)) for x, y in zip(SCORES[0], SCORES[1])]
    expected = _run(mean_rows)
    for got, want in zip(r0["B"], expected):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-12, atol=1e-12)
    assert r0["B"][-1] != _run(SCORES[0])[-1] and r0["B"][-1] != _run(SCORES[1])[-1]
    assert len(set(r0["B"][-1])) > 1  # a real, non-neutral B
