"""Plots people would rather look at than read: the balancing history of a run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_balance_history"]


def plot_balance_history(
    history: Sequence[Mapping[str, float]],
    modalities: Sequence[str],
    png: str | Path,
    title: str = "",
    panels: Sequence[tuple[str, str]] = (("eps", "head score eps_i"), ("B", "balancing coefficient B_i")),
) -> Path:
    """Draw one panel per statistic (rows) with one line per modality, against the iteration.

    Args:
        history: one mapping per iteration with keys ``"{stat}_{modality}"`` (e.g. ``eps_t1``,
            ``B_flair``) and optionally ``"iteration"``; missing keys are skipped.
        modalities: the modality names, in the order the lines are drawn.
        png: output file.
        title: figure title.
        panels: ``(stat, y-axis label)`` per row.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: ``history`` is empty or holds none of the requested statistics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("the balancing history is empty: nothing to plot")
    present = [(s, lab) for s, lab in panels if any(f"{s}_{m}" in h for h in history for m in modalities)]
    if not present:
        wanted = [f"{s}_<modality>" for s, _ in panels]
        raise ValueError(f"the history holds none of {wanted}; keys seen: {sorted(history[0])}")
    x = [h.get("iteration", i + 1) for i, h in enumerate(history)]
    fig, axes = plt.subplots(len(present), 1, figsize=(8, 2.6 * len(present)), sharex=True, squeeze=False)
    for ax, (stat, label) in zip(axes[:, 0], present):
        for m in modalities:
            key = f"{stat}_{m}"
            pts = [(xi, h[key]) for xi, h in zip(x, history) if key in h]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=m, linewidth=1.2)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="best", ncol=len(modalities), fontsize="small")
    axes[-1, 0].set_xlabel("iteration")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
