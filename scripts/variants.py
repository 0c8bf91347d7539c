"""The variants the benchmarks run: one table per bundle, name -> config files and overrides.

A variant is a bundle as a user runs it: ``bundles/brats_cggm.json`` (or
``bundles/multiview_cggm.json``), the extra config files laid over it, and a few ``{key: value}``
overrides, exactly what ``python -m monai.bundle run --config_file ... --key value`` takes.
``bench_balance.py`` runs the BraTS variants through that command line, ``bench_multiview.py``
the multi-view ones through ``ConfigWorkflow``, and ``bench_overhead.py`` builds a BraTS variant's
network, heads and balancing handler with ``ConfigParser``; none of them knows a method by its
name. A new variant is one entry here.

Retired: ``two_view_singles`` (each sequence alone as a view beside the others) and the
CGGM-guided recipes (``two_view_guided_drop``, ``two_view_k4_guided_drop``,
``two_view_k4_score_drop``, ``two_view_k4_score_sep``, ``two_view_guided_sep``) were measured,
not adopted, and their options deleted after commit bf89dd8; their results stay in
``docs/results/balance_robust*.json``. ``ogmge_level1_full`` (OGM-GE's half-resolution heads
scored at full resolution, ``score_at="full"``), ``cggm_every4`` (CGGM's heads, B and direction
term every 4th iteration, CGGM's ``observe_every``) and ``cggm_sublattice`` (CGGM's heads on one
voxel in 8, CGGM's ``sublattice``) were measured, not adopted, and their options deleted; their
results are in ``docs/archive.md``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLES",
    "BRATS_BUNDLE",
    "MULTIVIEW_BUNDLE",
    "SEQUENCES",
    "Variant",
    "VARIANTS",
    "MULTIVIEW_VARIANTS",
    "ROBUST_VARIANTS",
    "default_names",
    "bundle_arguments",
]

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
BRATS_BUNDLE = BUNDLES / "brats_cggm.json"
MULTIVIEW_BUNDLE = BUNDLES / "multiview_cggm.json"
SEQUENCES = ("t1", "t1ce", "t2", "flair")


@dataclass(frozen=True)
class Variant:
    """One configuration of a bundle.

    Args:
        description: one line, what is run.
        overrides: bundle key (``#``-separated, as on the command line) -> value.
        files: config files laid over the bundle, in order, relative to ``bundles/``.
        default: whether a benchmark runs it without being asked (the others are opt-in).
        bundle: the bundle the variant is a configuration of.
    """

    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    default: bool = True
    bundle: Path = BRATS_BUNDLE

    def __post_init__(self) -> None:
        # a variant that names no recipe trains without one, whatever the bundle's default
        if "recipe" not in self.overrides:
            object.__setattr__(self, "overrides", {"recipe": "none", **self.overrides})

    @property
    def config_files(self) -> list[str]:
        """The bundle and the variant's files, as paths (what ``ConfigParser.read_config`` takes)."""
        return [str(self.bundle), *(str(self.bundle.parent / f) for f in self.files)]

    @property
    def config_file(self) -> str | list[str]:
        """The bundle alone, or the list of files (what ``ConfigWorkflow(config_file=...)`` takes)."""
        files = self.config_files
        return files[0] if len(files) == 1 else files


def bundle_arguments(variant: Variant) -> list[str]:
    """``--config_file`` and one ``--key value`` per override, for ``python -m monai.bundle run``.

    Values other than strings are written as Python literals (``False``, ``0.5``, ``['t1']``),
    which the bundle runner's command line reads back as such.
    """
    files = variant.config_files
    arguments = ["--config_file", files[0] if len(files) == 1 else str(files)]
    for key, value in variant.overrides.items():
        arguments += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return arguments


def default_names(table: dict[str, Variant]) -> list[str]:
    """The names of the variants a benchmark runs by default, in the table's order."""
    return [name for name, variant in table.items() if variant.default]


#: OGM-GE's heads trained and scored on every voxel, every iteration (the bundle's OGM-GE trains
#: them every 4th iteration on one voxel in 8)
_OGMGE_DENSE = {"methods#ogmge#observe_every": 1, "methods#ogmge#head_options#sublattice": False}

#: The BraTS bundle's variants (``bench_balance.py``, ``bench_overhead.py``).
VARIANTS: dict[str, Variant] = {
    "joint": Variant(
        "the multi-encoder network, plain loss; the light heads only observe", {"method": "joint"}
    ),
    "cggm": Variant(
        "CGGM, the trend signal, magnitude grad + direction gradient (the bundle's)", {"method": "cggm"}
    ),
    "cggm_magnitude": Variant(
        "CGGM, magnitude only (direction off)", {"method": "cggm", "methods#cggm#direction": "off"}
    ),
    "cggm_direction": Variant(
        "CGGM, direction only (magnitude off)", {"method": "cggm", "methods#cggm#magnitude": "off"}
    ),
    "cggm_paper": Variant(
        "CGGM with the paper's bare per-iteration formula (tracker preset paper)",
        {"method": "cggm", "methods#cggm#tracker#preset": "paper"},
    ),
    "ogmge": Variant(
        "OGM-GE (alpha 0.8, GE noise, first half of the epochs), full-resolution heads trained every 4th "
        "iteration on one voxel in 8 (the bundle's)",
        {"method": "ogmge"},
    ),
    "moddrop": Variant(
        "joint training with modality dropout, each sequence zeroed with p 0.5 (one kept)",
        {"method": "joint", "modality_dropout": 0.5},
    ),
    "moddrop_p25": Variant(
        "modality dropout with p 0.25", {"method": "joint", "modality_dropout": 0.25}, default=False
    ),
    "cggm_moddrop": Variant(
        "CGGM and modality dropout (p 0.5) together", {"method": "cggm", "modality_dropout": 0.5}
    ),
    "early_fusion": Variant(
        "one SegResNet on the four stacked sequences (no branches, no heads)", files=("early_fusion.json",)
    ),
    **{
        f"unimodal_{s}": Variant(
            f"the same network on {s} alone", {"sequences": [s]}, files=("unimodal.json",)
        )
        for s in SEQUENCES
    },
    **{
        "dedicated_" + "_".join(subset): Variant(
            f"a model of its own for the subset {'+'.join(subset)}: the same network on those sequences "
            "only (the phantom's ceiling for that case of missing data)",
            {"sequences": list(subset)},
            files=("unimodal.json",),
            default=False,
        )
        for size in (2, 3, 4)
        for subset in itertools.combinations(SEQUENCES, size)
    },
    "plain": Variant(
        "the multi-encoder network, plain loss, no heads and no balancing handler",
        {"method": "none"},
        default=False,
    ),
    "cggm_level0": Variant(
        "CGGM with full-resolution heads (level 0; the bundle's are half resolution)",
        {"method": "cggm", "methods#cggm#head_options#level": 0},
        default=False,
    ),
    "ogmge_all_voxels": Variant(
        "OGM-GE, full-resolution heads trained every 4th iteration on every voxel",
        {"method": "ogmge", "methods#ogmge#head_options#sublattice": False},
        default=False,
    ),
    "ogmge_every1": Variant(
        "OGM-GE, full-resolution heads trained every iteration on every voxel",
        {"method": "ogmge", **_OGMGE_DENSE},
        default=False,
    ),
    "ogmge_every8": Variant(
        "OGM-GE, full-resolution heads trained every 8th iteration on every voxel",
        {"method": "ogmge", "methods#ogmge#observe_every": 8, "methods#ogmge#head_options#sublattice": False},
        default=False,
    ),
    "ogmge_level1": Variant(
        "OGM-GE, half-resolution heads (level 1) trained every iteration on every voxel",
        {"method": "ogmge", "methods#ogmge#head_options#level": 1, **_OGMGE_DENSE},
        default=False,
    ),
}


#: the robust-training recipe (``recipes#robust`` of the bundle) with some settings changed
#: the recipe of ``two_view``, every setting written out, so that a variant means the same whatever
#: the bundle's ``recipes#robust`` holds
TWO_VIEW = {
    "sampler": "uniform",
    "feature_masking": True,
    "full_view": True,
    "subset_views": 1,
    "distill_weight": 0.5,
    "distill": "bce",
    "sep_weight": 0.5,
    "sep_level": 1,
    "warmup_epochs": 0,
}


def _robust(description: str, method: str = "joint", default: bool = False, **settings: Any) -> Variant:
    overrides: dict[str, Any] = {"method": method, "recipe": "robust"}
    overrides.update({f"recipes#robust#{k}": v for k, v in {**TWO_VIEW, **settings}.items()})
    return Variant(description, overrides, default=default)


#: The robust-training variants (``bench_balance.py --section robust``): the bundle's recipe
#: (``recipes#robust``: uniform-15 subsets, feature masking, the full view beside the subset view
#: with a BCE consistency 0.5, per-sequence heads 0.5) and its ablations.
ROBUST_VARIANTS: dict[str, Variant] = {
    "subset_input": _robust(
        "one view: a uniform-15 subset per sample, missing sequences zero-filled at the input only",
        full_view=False,
        distill_weight=0.0,
        sep_weight=0.0,
        feature_masking=False,
    ),
    "subset_masked": _robust(
        "one view: a uniform-15 subset per sample, missing sequences also masked at the features",
        full_view=False,
        distill_weight=0.0,
        sep_weight=0.0,
    ),
    "subset_masked_sep": _robust(
        "subset_masked + per-sequence heads (weight 0.5) whose loss trains the encoders",
        full_view=False,
        distill_weight=0.0,
    ),
    "two_view": _robust(
        "the recipe: full input + a uniform-15 subset view, feature masking, consistency BCE 0.5, "
        "per-sequence heads 0.5"
    ),
    "two_view_nodistill": _robust("two_view without the consistency term", distill_weight=0.0),
    "two_view_k4": _robust(
        "two_view with 4 subset views per step (the encoders run once for all views)", subset_views=4
    ),
    "two_view_k4_size": _robust(
        "two_view_k4 with k ~ U{1..4} sequences kept in each subset view", subset_views=4, sampler="size"
    ),
    "two_view_k4_warmup": _robust(
        "two_view_k4 after 20 epochs on the full input only", subset_views=4, warmup_epochs=20
    ),
    "two_view_cggm": _robust("two_view under CGGM (magnitude grad + direction, the bundle's)", method="cggm"),
    "sep": Variant(
        "per-sequence heads (weight 1) whose loss trains the encoders, no missing sequences (the sep recipe)",
        {"method": "joint", "recipe": "sep"},
        default=False,
    ),
    "mmpareto": Variant(
        "MMPareto (scale 1.5) on the sep recipe's per-sequence heads",
        {"method": "mmpareto", "recipe": "sep"},
        default=False,
    ),
    "two_view_mmpareto": _robust(
        "two_view with MMPareto combining each encoder's gradients", method="mmpareto"
    ),
}
VARIANTS.update(ROBUST_VARIANTS)


def _guided(guide: str) -> dict[str, Any]:
    """Overrides that replace the bundle's robust step by the experiment of
    ``scripts/guided_recipe.py`` (importable where ``scripts/`` is on the path, as in the
    benchmarks)."""
    return {
        "robust_step": {
            "_target_": "guided_recipe.GuidedStep",
            "recipe": "@robust",
            "sep_heads": "@sep_heads",
            "method": "@balancing_method",
            "guide": guide,
        }
    }


def _multiview(description: str, overrides: dict[str, Any]) -> Variant:
    return Variant(description, overrides, bundle=MULTIVIEW_BUNDLE)


#: The multi-view bundle's variants (``bench_multiview.py``).
MULTIVIEW_VARIANTS: dict[str, Variant] = {
    "joint": _multiview(
        "the multi-view network, plain loss; the light heads only observe", {"method": "joint"}
    ),
    "ogmge": _multiview("OGM-GE (alpha 0.8, GE noise, first half of the epochs)", {"method": "ogmge"}),
    "cggm": _multiview(
        "CGGM, the trend signal, magnitude grad + direction gradient (rho 1.3, lambda 0.2)",
        {"method": "cggm"},
    ),
    "cggm_magnitude": _multiview(
        "CGGM, magnitude only (direction off)", {"method": "cggm", "methods#cggm#direction": "off"}
    ),
    "cggm_direction": _multiview(
        "CGGM, direction only (magnitude off)", {"method": "cggm", "methods#cggm#magnitude": "off"}
    ),
    "cggm_paper": _multiview(
        "CGGM with the paper's bare per-iteration formula (tracker preset paper)",
        {"method": "cggm", "methods#cggm#tracker#preset": "paper"},
    ),
    "subset": _multiview(
        "one random subset of the views per step (uniform over the non-empty subsets), feature masking",
        {
            "method": "joint",
            "recipe": "robust",
            "recipes#robust#full_view": False,
            "recipes#robust#subset_views": 1,
            "recipes#robust#distill_weight": 0.0,
            "recipes#robust#sep_weight": 0.0,
        },
    ),
    "robust": _multiview(
        "the robust recipe: full view + 4 subset views, distillation 0.5, per-view heads 0.5",
        {"method": "joint", "recipe": "robust"},
    ),
    "cggm_robust": _multiview("CGGM balancing the robust recipe", {"method": "cggm", "recipe": "robust"}),
    "mmpareto_robust": _multiview(
        "MMPareto combining each encoder's fused and per-view gradients in the robust recipe",
        {"method": "mmpareto", "recipe": "robust"},
    ),
    # experiments (scripts/guided_recipe.py): the heads' scores steering the recipe
    "guided_sep": _multiview(
        "the robust recipe, the heads' scores setting each per-view head's weight (experiment)",
        {"method": "joint", "recipe": "robust", **_guided("sep")},
    ),
    "guided_drop": _multiview(
        "the robust recipe, the heads' scores setting each view's drop probability (experiment)",
        {"method": "joint", "recipe": "robust", **_guided("drop")},
    ),
}
