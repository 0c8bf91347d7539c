"""The ``cggm-seg`` command line (also ``python -m cggm_seg``).

Each sub-command lives beside the library code it drives and registers itself through an
``add_subparser(subparsers)`` function that sets ``func`` on its parser; ``func(args)`` returns
the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute sub-commands, in the order they are listed by --help.
_COMMAND_MODULES = (
    "cggm_seg.data.phantom",
    "cggm_seg.data.check",
    "cggm_seg.data.datalist",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cggm-seg",
        description="Balanced multimodal learning for BraTS with MONAI: data tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).add_subparser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
