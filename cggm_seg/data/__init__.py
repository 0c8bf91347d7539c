"""Former home of the BraTS and multi-view data modules, kept so that ``cggm_seg.data`` paths keep
working for one release: ``cggm_seg.data.<module>`` is :mod:`cggm_seg.apps.brats` ``.<module>``
(or :mod:`cggm_seg.apps.multiview` for ``views`` and ``aligned``), and every name of those packages
is importable from here. New code imports from the applications."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_MOVED = {
    **{
        name: f"cggm_seg.apps.brats.{name}"
        for name in (
            "check",
            "datalist",
            "discovery",
            "layouts",
            "phantom",
            "prepare",
            "preview",
            "sequences",
            "transforms",
        )
    },
    "views": "cggm_seg.apps.multiview.views",
    "aligned": "cggm_seg.apps.multiview.aligned",
}


class _Alias(importlib.abc.Loader):
    """Loads ``cggm_seg.data.<module>`` as the module it moved to."""

    def create_module(self, spec):  # noqa: D102
        return importlib.import_module(_MOVED[spec.name.rsplit(".", 1)[1]])

    def exec_module(self, module):  # noqa: D102
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # noqa: D102
        prefix, _, name = fullname.rpartition(".")
        if prefix == __name__ and name in _MOVED:
            return importlib.util.spec_from_loader(fullname, _Alias())
        return None


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())


def __getattr__(name: str) -> object:
    for package in ("cggm_seg.apps.brats", "cggm_seg.apps.multiview"):
        module = importlib.import_module(package)
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
