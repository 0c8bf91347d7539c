"""The ``cggm-seg`` command line (also ``python -m cggm_seg``): the data tools.

    cggm-seg phantom --out DIR --cases N [--seed S] [--layout L] [--spacing MM] [--noise ..] [--contrast ..]
    cggm-seg phantom --preview CASE --png OUT.png
    cggm-seg check [DIR] [--layout L] [--datalist FILE]
    cggm-seg datalist DIR --out FILE [--seed S] [--layout L] [--fractions T V E]

Each command parses its arguments here and calls the library (:mod:`cggm_seg.data`); every
``_run_*`` returns the process exit code. The library modules know nothing of argparse.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cggm_seg.errors import install_excepthook

__all__ = ["build_parser", "main"]


# -- phantom -------------------------------------------------------------------------------------


def _knob(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip().lower(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SEQUENCE=NUMBER (e.g. flair=2.0), got {text!r}") from None


def _add_phantom(subparsers: argparse._SubParsersAction, layouts: Sequence[str]) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="generate a synthetic BraTS-like dataset (or preview a case as a PNG)",
        description=(
            "Generate a physics-based phantom dataset on the MNI152 anatomy, laid out like real "
            "BraTS data; or, with --preview, render an axial montage of an existing case."
        ),
    )
    parser.add_argument("--out", type=Path, help="dataset folder to write")
    parser.add_argument("--cases", type=int, help="number of cases to generate")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (default 2.0)")
    parser.add_argument("--layout", default="brats2021", choices=sorted(layouts))
    parser.add_argument(
        "--noise",
        type=_knob,
        nargs="+",
        default=[],
        metavar="SEQ=X",
        help="Rician noise multiplier per sequence, e.g. --noise flair=2.0 t1=0.5",
    )
    parser.add_argument(
        "--contrast",
        type=_knob,
        nargs="+",
        default=[],
        metavar="SEQ=X",
        help="tumour contrast multiplier per sequence (0 = tumour invisible), e.g. --contrast t1ce=0.5",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--preview", type=Path, metavar="CASE", help="case folder (or MSD image) to render")
    parser.add_argument("--png", type=Path, help="PNG to write with --preview")
    parser.set_defaults(func=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> int:
    from cggm_seg.apps.brats.phantom import PhantomConfig, write_phantom_dataset

    try:
        if args.preview is not None:
            if args.png is None:
                raise ValueError("--preview needs --png OUT.png")
            from cggm_seg.apps.brats.preview import render_case_preview

            render_case_preview(args.preview, args.png)
            print(f"wrote {args.png}")
            return 0
        if args.out is None or args.cases is None:
            raise ValueError("give --out DIR and --cases N (or --preview CASE --png OUT.png)")
        config = PhantomConfig(spacing=args.spacing, noise=dict(args.noise), contrast=dict(args.contrast))
        ids = write_phantom_dataset(
            args.out,
            args.cases,
            seed=args.seed,
            layout=args.layout,
            config=config,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"cggm-seg phantom: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(ids)} {args.layout} case(s) to {args.out}")
    return 0


# -- check ---------------------------------------------------------------------------------------


def _add_check(subparsers: argparse._SubParsersAction, layouts: Sequence[str]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="validate a BraTS dataset folder and/or datalist, reporting every problem",
        description="Report every problem in a BraTS dataset (missing, unreadable, duplicated or "
        "inconsistent files, bad label values, NaN/Inf, all-zero or constant sequences) and in a "
        "datalist, and list the files and folders that belong to no case. Exit code 1 if any "
        "problem is found, 0 if the data is clean (skipped files are not problems). Nothing is "
        "modified.",
    )
    parser.add_argument("root", metavar="DIR", type=Path, nargs="?", help="the dataset folder")
    parser.add_argument("--layout", choices=sorted(layouts), help="dataset layout (default: detect)")
    parser.add_argument("--datalist", type=Path, help="a datalist JSON to check (alone or with DIR)")
    parser.add_argument(
        "--spacing-tol", type=float, default=1e-3, help="spacing tolerance in mm (default: 1e-3)"
    )
    parser.add_argument("--affine-tol", type=float, default=1e-3, help="affine tolerance (default: 1e-3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_check, _parser=parser)


def _run_check(args: argparse.Namespace) -> int:
    from cggm_seg.apps.brats.check import check_dataset

    if args.root is None and args.datalist is None:
        args._parser.error("expected a dataset folder DIR, --datalist FILE, or both")
    report = check_dataset(
        args.root,
        args.layout,
        args.datalist,
        spacing_tol=args.spacing_tol,
        affine_tol=args.affine_tol,
        progress=not args.no_progress,
    )
    print(report.format())
    return 0 if report.ok else 1


# -- datalist ------------------------------------------------------------------------------------


def _add_datalist(subparsers: argparse._SubParsersAction, layouts: Sequence[str]) -> None:
    from cggm_seg.apps.brats.datalist import DEFAULT_FRACTIONS

    parser = subparsers.add_parser(
        "datalist",
        help="write a MONAI datalist JSON with a seeded train/validation/test split",
        description="Discover the cases of a BraTS dataset and write a decathlon-format datalist "
        "with a fixed, seeded split (a case's split depends only on its id and the seed).",
    )
    parser.add_argument("root", metavar="DIR", type=Path, help="the dataset folder")
    parser.add_argument("--out", required=True, type=Path, help="the datalist JSON file to write")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    parser.add_argument("--layout", choices=sorted(layouts), help="dataset layout (default: detect)")
    parser.add_argument(
        "--fractions",
        nargs=3,
        type=float,
        default=DEFAULT_FRACTIONS,
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of labelled cases per split (default: %(default)s)",
    )
    parser.set_defaults(func=_run_datalist)


def _run_datalist(args: argparse.Namespace) -> int:
    from cggm_seg.apps.brats.datalist import SPLITS, UNLABELLED, make_datalist, write_datalist
    from cggm_seg.apps.brats.discovery import discover_cases

    try:
        cases = discover_cases(args.root, args.layout)
        datalist = make_datalist(cases, seed=args.seed, fractions=args.fractions)
    except ValueError as err:
        print(f"cggm-seg datalist: {err}", file=sys.stderr)
        return 1
    write_datalist(datalist, args.out)
    counts = ", ".join(f"{datalist[f'num{s.capitalize()}']} {s}" for s in (*SPLITS, UNLABELLED))
    print(f"wrote {args.out}: {counts} ({datalist['layout']}, seed {args.seed})")
    return 0


# -- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``cggm-seg`` parser with its sub-commands ``phantom``, ``check`` and ``datalist``."""
    from cggm_seg.apps.brats.layouts import LAYOUTS

    parser = argparse.ArgumentParser(
        prog="cggm-seg",
        description="Balanced multimodal learning for BraTS with MONAI: data tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_phantom, _add_check, _add_datalist):
        add(subparsers, tuple(LAYOUTS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cggm-seg`` with ``argv`` (default: the process arguments); returns the exit code.

    Installs :func:`cggm_seg.errors.summarising_excepthook` first, so that an error the command
    does not report itself ends with its cause.
    """
    install_excepthook()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
