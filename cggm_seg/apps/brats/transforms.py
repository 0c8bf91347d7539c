"""MONAI transforms between a BraTS layout's files and the toolkit's canonical tensors.

Inside cggm_seg an image is ``(4, H, W, D)`` in :data:`~cggm_seg.apps.brats.layouts.MODALITIES` order and
a label is ``(3, H, W, D)`` float32 region channels in :data:`~cggm_seg.apps.brats.layouts.REGIONS` order
(TC, WT, ET). These transforms get there from any layout and back:

- :class:`OrderModalitiesd` puts the channels of an MSD 4D image in canonical order;
- :class:`ConvertToRegionsd` / :func:`label_to_regions` turn a layout's label values into regions
  (unlike MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd``, also right for MSD labels);
- :class:`RegionsToLabeld` / :func:`regions_to_label` turn region channels back into the layout's
  label values, to write predictions as BraTS-style segmentations;
- :func:`load_transforms` chains loading and the two forward conversions for a bundle.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirstd, LoadImage, LoadImaged, MapTransform
from monai.utils import convert_to_dst_type

from cggm_seg.apps.brats.layouts import MODALITIES, REGIONS, Layout, get_layout

__all__ = [
    "label_to_regions",
    "regions_to_label",
    "order_modalities",
    "ConvertToRegionsd",
    "RegionsToLabeld",
    "OrderModalitiesd",
    "LoadSequencesd",
    "load_transforms",
]


def label_to_regions(label: NdarrayOrTensor, layout: str | Layout) -> NdarrayOrTensor:
    """Convert a layout's label map into region channels [TC, WT, ET].

    Args:
        label: ``(1, H, W[, D])`` label values of ``layout`` (floats are rounded first).
        layout: the layout whose :attr:`~cggm_seg.apps.brats.layouts.Layout.region_labels` define the
            regions, e.g. ``brats2021``: TC = 1 + 4, WT = 1 + 2 + 4, ET = 4; ``msd``: TC = 2 + 3,
            WT = 1 + 2 + 3, ET = 3.

    Returns:
        ``(3, H, W[, D])`` float32 of 0/1, the same array type as ``label`` (a MetaTensor keeps its meta).

    Raises:
        ValueError: ``label`` does not have exactly one channel first.
    """
    layout = get_layout(layout)
    if label.ndim < 2 or label.shape[0] != 1:
        raise ValueError(
            f"label of shape {tuple(label.shape)}; expected one channel first, (1, H, W, D) "
            "(add EnsureChannelFirstd after LoadImaged)"
        )
    if isinstance(label, torch.Tensor):
        values = _plain(label)[0]
        if values.is_floating_point():
            values = values.round()
        regions = [
            torch.isin(values, torch.tensor(layout.region_labels[r], dtype=values.dtype)) for r in REGIONS
        ]
        out: NdarrayOrTensor = torch.stack(regions)
    else:
        values = np.asarray(label[0])
        if np.issubdtype(values.dtype, np.floating):
            values = values.round()
        out = np.stack([np.isin(values, layout.region_labels[r]) for r in REGIONS])
    return convert_to_dst_type(
        out, label, dtype=torch.float32 if isinstance(label, torch.Tensor) else np.float32
    )[0]


def regions_to_label(
    regions: NdarrayOrTensor, layout: str | Layout, threshold: float = 0.5
) -> NdarrayOrTensor:
    """Convert region channels [TC, WT, ET] into the layout's label values (the inverse of
    :func:`label_to_regions` on consistent regions).

    The regions are nested first (TC only inside WT, ET only inside TC: a prediction can break the
    hierarchy that real labels obey), then a voxel gets the enhancing-tumour value where ET is on,
    else the necrosis / non-enhancing core value where TC is on, else the oedema value where WT is
    on, else 0: for ``brats2021`` 4 / 1 / 2, ``brats2023`` 3 / 1 / 2, ``msd`` 3 / 2 / 1.

    Args:
        regions: ``(3, H, W[, D])`` region channels, boolean or probabilities.
        layout: the layout whose label values to write.
        threshold: a non-boolean channel is on where it is greater than this (default 0.5).

    Returns:
        ``(1, H, W[, D])`` uint8 label, the same array type as ``regions`` (a MetaTensor keeps its meta).

    Raises:
        ValueError: ``regions`` does not have 3 channels first.
    """
    layout = get_layout(layout)
    if regions.ndim < 2 or regions.shape[0] != len(REGIONS):
        raise ValueError(
            f"regions of shape {tuple(regions.shape)}; expected {len(REGIONS)} channels first "
            f"({', '.join(r.upper() for r in REGIONS)}, H, W, D)"
        )
    array = (
        _plain(regions).detach().cpu().numpy() if isinstance(regions, torch.Tensor) else np.asarray(regions)
    )
    on = array if array.dtype == bool else array > threshold
    masks = dict(zip(REGIONS, on))
    oedema, core, enhancing = _label_values(layout)
    label = np.zeros((1, *array.shape[1:]), dtype=np.uint8)
    wt = masks["wt"]
    tc = masks["tc"] & wt
    et = masks["et"] & tc
    # Nested regions painted from the outside in, so the innermost region wins.
    label[0][wt] = oedema
    label[0][tc] = core
    label[0][et] = enhancing
    return convert_to_dst_type(
        label, regions, dtype=torch.uint8 if isinstance(regions, torch.Tensor) else np.uint8
    )[0]


def order_modalities(image: NdarrayOrTensor, layout: str | Layout) -> NdarrayOrTensor:
    """Reorder the channels of a channel-first image into the order of
    :data:`~cggm_seg.apps.brats.layouts.MODALITIES`.

    Args:
        image: ``(4, H, W, D)``; for the ``msd`` layout in file order (FLAIR, T1w, T1gd, T2w).
        layout: the layout the image was loaded from; per-file layouts are already in canonical
            order (one file per modality, listed canonically), so ``image`` is returned unchanged.

    Raises:
        ValueError: a 4D-layout image without 4 channels first.
    """
    layout = get_layout(layout)
    if not layout.is_4d:
        return image
    if image.ndim < 2 or image.shape[0] != len(MODALITIES):
        source = getattr(image, "meta", {}).get("filename_or_obj", "the image")
        raise ValueError(
            f"{source} has shape {tuple(image.shape)} after channel-first conversion; expected "
            f"{len(MODALITIES)} channels first ({', '.join(layout.msd_channels)} in a {layout.name} file)"
        )
    index = list(layout.channel_index())
    if isinstance(image, torch.Tensor):
        return convert_to_dst_type(_plain(image)[index], image)[0]
    return np.asarray(image)[index]


class ConvertToRegionsd(MapTransform):
    """Dictionary transform: a layout's label ``(1, H, W, D)`` -> float32 regions ``(3, H, W, D)``.

    See :func:`label_to_regions`.

    Args:
        keys: keys of the labels to convert.
        layout: layout name (``brats2021``, ``brats2023``, ``msd``) or Layout of the labels.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(self, keys: KeysCollection, layout: str | Layout, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.layout = get_layout(layout)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = label_to_regions(d[key], self.layout)
        return d


class RegionsToLabeld(MapTransform):
    """Dictionary transform: regions ``(3, H, W, D)`` -> the layout's uint8 label ``(1, H, W, D)``.

    See :func:`regions_to_label`; use before ``SaveImaged`` to write BraTS-style segmentations.

    Args:
        keys: keys of the region channels (predictions) to convert.
        layout: layout name or Layout whose label values to write.
        threshold: a non-boolean channel is on where it is greater than this (default 0.5).
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        layout: str | Layout,
        threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.layout = get_layout(layout)
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = regions_to_label(d[key], self.layout, self.threshold)
        return d


class OrderModalitiesd(MapTransform):
    """Dictionary transform: channel-first image ``(4, H, W, D)`` -> canonical modality order.

    See :func:`order_modalities`: reorders MSD 4D images, a no-op for per-file layouts.

    Args:
        keys: keys of the images to reorder.
        layout: layout name or Layout the images were loaded from.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(self, keys: KeysCollection, layout: str | Layout, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.layout = get_layout(layout)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = order_modalities(d[key], self.layout)
        return d


def load_transforms(
    layout: str | Layout,
    image_key: str = "image",
    label_key: str | None = "label",
) -> list[MapTransform]:
    """Transforms that load a datalist entry into canonical tensors.

    ``LoadImaged`` (nibabel, so that images and labels share one reader and orientation) ->
    ``EnsureChannelFirstd`` -> :class:`OrderModalitiesd` -> :class:`ConvertToRegionsd`, giving
    ``image`` ``(4, H, W, D)`` in MODALITIES order and ``label`` ``(3, H, W, D)`` float32 regions.

    Args:
        layout: layout name or Layout of the dataset.
        image_key: key of the image entry (4 files or one 4D file), default ``"image"``.
        label_key: key of the label entry, default ``"label"``; ``None`` for unlabelled data.
    """
    keys: Sequence[str] = [image_key] if label_key is None else [image_key, label_key]
    transforms: list[MapTransform] = [
        LoadImaged(keys, reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(keys),
        OrderModalitiesd(image_key, layout),
    ]
    if label_key is not None:
        transforms.append(ConvertToRegionsd(label_key, layout))
    return transforms


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """The data of a MetaTensor as a plain tensor, so intermediate results carry no meta of their own."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


def _label_values(layout: Layout) -> tuple[int, int, int]:
    """(oedema, tumour core without ET, enhancing tumour) label values of ``layout``."""
    regions = {name: set(values) for name, values in layout.region_labels.items()}
    parts = (regions["wt"] - regions["tc"], regions["tc"] - regions["et"], regions["et"])
    if any(len(p) != 1 for p in parts):
        raise ValueError(
            f"layout {layout.name!r} regions {layout.region_labels}; expected nested TC in WT, ET in TC, "
            "each adding one label value, to map regions back to labels"
        )
    return tuple(next(iter(p)) for p in parts)  # type: ignore[return-value]


class LoadSequencesd(MapTransform):
    """``LoadImaged`` that also takes a missing sequence: loaded as a channel of zeros.

    For a complete case it gives what ``LoadImaged`` gives (the same array, affine, metadata; a
    list of sequence files stacked channel-first, a single file as it is, so that
    ``EnsureChannelFirstd`` follows as usual), and it also takes a case whose datalist entry has ``None`` in
    place of a sequence's file (``inference_datalist`` / ``prepare_dataset`` with
    ``allow_missing=True``): that channel is zero, which stays zero through
    ``NormalizeIntensityd(nonzero=True)``, the toolkit's contract for a missing sequence (the
    network, when it masks features, treats it as absent).

    Args:
        keys: the keys to load (image, label); a label is one file.
        reader: the image reader. Defaults to ``"NibabelReader"``.
        allow_missing_keys: as for any ``MapTransform``.

    Raises:
        ValueError: an entry whose sequences are all missing, or whose present files differ in shape
            (the message names the case and the files).
    """

    def __init__(
        self, keys: KeysCollection, reader: str = "NibabelReader", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage(reader=reader, image_only=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.load(d[key], d.get("case_id"))
        return d

    def load(self, paths: Any, case_id: Any = None) -> MetaTensor:
        """One file as it is stored, or a list of files (``None`` for missing ones) as ``C x H x W x D``."""
        if not isinstance(paths, (list, tuple)):
            return self.loader(paths)
        if all(p is None for p in paths):
            raise ValueError(f"case {case_id!r}: every sequence is missing; nothing to predict from.")
        loaded = {i: self.loader(p) for i, p in enumerate(paths) if p is not None}
        reference = next(iter(loaded.values()))
        shapes = {i: tuple(v.shape) for i, v in loaded.items()}
        if len(set(shapes.values())) > 1:
            listing = ", ".join(f"{paths[i]} {list(shape)}" for i, shape in shapes.items())
            raise ValueError(f"case {case_id!r}: its sequence files differ in shape: {listing}.")
        channels = [
            loaded[i].as_tensor() if i in loaded else torch.zeros(reference.shape, dtype=reference.dtype)
            for i in range(len(paths))
        ]
        meta = dict(reference.meta)
        meta["original_channel_dim"] = 0
        meta["filename_or_obj"] = str(paths[min(loaded)])
        return MetaTensor(torch.stack(channels, dim=0), meta=meta)
