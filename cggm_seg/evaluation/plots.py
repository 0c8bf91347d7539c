"""Plots people would rather look at than read: the balancing history of a run, the
missing-sequence audit (subset x region Dice, Shapley values), validation curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_balance_history", "plot_subset_dice", "plot_subset_metric", "plot_shapley"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, png: str | Path) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    fig.clf()
    _pyplot().close(fig)
    return png


def plot_subset_dice(
    subsets: Sequence[Mapping[str, object]],
    png: str | Path,
    title: str = "",
    regions: Sequence[str] = ("tc", "wt", "et"),
) -> Path:
    """Heat map of the missing-sequence audit: one row per subset of sequences, one column per region
    (and the mean), the cell's mean Dice written in it.

    Args:
        subsets: rows ``{"name": "t1+flair", "dice_tc": ..., "dice_wt": ..., "dice_et": ..., "dice_mean"}``.
        png: output file.
        title: figure title.
        regions: the region columns before the mean.

    Raises:
        ValueError: no subsets.
    """
    if not subsets:
        raise ValueError("no subsets to plot")
    plt = _pyplot()
    columns = [*regions, "mean"]
    values = [[float(row[f"dice_{c}"]) for c in columns] for row in subsets]
    fig, ax = plt.subplots(figsize=(5.2, 0.32 * len(subsets) + 1.4))
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), [c.upper() for c in columns])
    ax.set_yticks(range(len(subsets)), [str(row["name"]) for row in subsets])
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(
                j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8
            )
    fig.colorbar(image, ax=ax, label="Dice")
    ax.set_title(f"{title + ': ' if title else ''}Dice with sequences missing", fontsize=10)
    fig.tight_layout()
    return _save(fig, png)


def plot_subset_metric(
    subsets: Sequence[Mapping[str, object]], metric: str, png: str | Path, title: str = ""
) -> Path:
    """Bars of the missing-view audit: ``metric`` of the model given each subset of the views.

    Args:
        subsets: rows ``{"name": "mean+worst", metric: value, ...}``, smallest subsets first.
        metric: the key drawn (e.g. ``"accuracy"``, ``"r2"``).
        png: output file.
        title: figure title.

    Raises:
        ValueError: no subsets.
    """
    if not subsets:
        raise ValueError("no subsets to plot")
    plt = _pyplot()
    names = [str(row["name"]) for row in subsets]
    values = [float(row[metric]) for row in subsets]  # type: ignore[arg-type]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(subsets) + 1.4))
    ax.barh(range(len(values)), values, color="C0")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=7)
    ax.set_xlabel(metric)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{title + ': ' if title else ''}{metric} with views missing", fontsize=10)
    fig.tight_layout()
    return _save(fig, png)


def plot_shapley(
    shapley: Mapping[str, float], png: str | Path, title: str = "", metric: str = "mean Dice",
    players: str = "sequence",
) -> Path:  # fmt: skip
    """Bar chart of each sequence's (or view's) Shapley value for ``metric``: they sum to its
    value with everything present minus its value with nothing."""
    if not shapley:
        raise ValueError("no Shapley values to plot")
    plt = _pyplot()
    names, values = list(shapley), [float(v) for v in shapley.values()]
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    bars = ax.bar(names, values, color="tab:blue")
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(f"Shapley value ({metric})")
    ax.set_title(
        f"{title + ': ' if title else ''}contribution of each {players} (sum {sum(values):.3f})", fontsize=9
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, png)


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
