"""Choosing and removing MRI sequences of a channel-first image: unimodal inputs, modality dropout,
and the zero-filled inputs of the missing-sequence audit.

A missing sequence is a channel of zeros *after* intensity normalisation (``NormalizeIntensityd``
with ``nonzero=True`` maps the brain to mean 0, std 1, so 0 is the mean tissue intensity): the
protocol of the missing-modality literature (RFNet, Ding et al. ICCV 2021; mmFormer, Zhang et
al. MICCAI 2022), used alike in training (:class:`RandSequenceDropoutd`) and evaluation
(:func:`zero_sequences`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from cggm_seg.apps.brats.layouts import MODALITIES

__all__ = ["check_sequences", "zero_sequences", "SelectSequencesd", "RandSequenceDropoutd"]


def check_sequences(sequences: Sequence[str], available: Sequence[str] = MODALITIES) -> tuple[str, ...]:
    """``sequences`` as a tuple, checked to be distinct names out of ``available``.

    Raises:
        ValueError: an empty selection, an unknown or repeated name.
    """
    chosen = tuple(str(s) for s in ([sequences] if isinstance(sequences, str) else sequences))
    unknown = [s for s in chosen if s not in available]
    if not chosen or unknown or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"sequences must be distinct names out of {list(available)}, got {list(chosen)}"
            + (f" (unknown: {unknown})" if unknown else "")
            + "."
        )
    return chosen


def zero_sequences(image: torch.Tensor, keep: Sequence[bool]) -> torch.Tensor:
    """A copy of ``image`` with the channels of the sequences not kept set to 0.

    Args:
        image: ``B x M x D x H x W`` (or ``M x D x H x W``), intensity-normalised.
        keep: M booleans, True for a sequence that is present.

    Raises:
        ValueError: ``keep`` has the wrong length.
    """
    channel_dim = 1 if image.dim() == 5 else 0
    if len(keep) != image.shape[channel_dim]:
        raise ValueError(
            f"keep has {len(keep)} entries for an image of {image.shape[channel_dim]} sequences."
        )
    mask = torch.tensor([bool(k) for k in keep], device=image.device, dtype=image.dtype)
    shape = [1] * image.dim()
    shape[channel_dim] = len(keep)
    return image * mask.view(shape)


class SelectSequencesd(MapTransform):
    """Dictionary transform: keep only some sequences (channels) of a canonical-order image.

    Args:
        keys: keys of the ``M x D x H x W`` images (channels in ``available`` order).
        sequences: the sequences to keep, e.g. ``["t2"]`` for a unimodal model; they come out in
            the order given. All of ``available`` (the default) is a no-op.
        available: the channel order of the input. Defaults to the canonical BraTS order.
        allow_missing_keys: don't raise when a key is missing.

    Raises:
        ValueError: an unknown sequence; in ``__call__``, an image whose channels are not ``available``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        sequences: Sequence[str] = MODALITIES,
        available: Sequence[str] = MODALITIES,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.available = tuple(available)
        self.sequences = check_sequences(sequences, self.available)
        self.indices = [self.available.index(s) for s in self.sequences]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].shape[0] != len(self.available):
                raise ValueError(
                    f"{key!r} has {d[key].shape[0]} channels; expected the {len(self.available)} "
                    f"sequences {list(self.available)}."
                )
            if self.indices != list(range(len(self.available))):
                d[key] = d[key][self.indices]
        return d


class RandSequenceDropoutd(RandomizableTransform, MapTransform):
    """Dictionary transform: modality dropout, the training recipe of missing-sequence segmentation.

    Each sequence (channel) of a sample is zeroed independently with probability ``prob``; if that
    would remove every sequence, one drawn uniformly is kept. Apply it after intensity
    normalisation, so a dropped sequence looks exactly like a missing one at test time
    (:func:`zero_sequences`). ``prob = 0`` is a no-op (and draws no random numbers).

    Args:
        keys: keys of the ``M x D x H x W`` images.
        prob: probability of dropping each sequence, in [0, 1).
        allow_missing_keys: don't raise when a key is missing.

    Raises:
        ValueError: ``prob`` outside [0, 1).
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.5, allow_missing_keys: bool = False) -> None:
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"prob must be in [0, 1) (1 would drop every sequence), got {prob}.")
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.drop_prob = float(prob)
        self.keep: np.ndarray | None = None

    def randomize(self, channels: int) -> None:
        keep = self.R.random_sample(channels) >= self.drop_prob
        if not keep.any():
            keep[self.R.randint(channels)] = True
        self.keep = keep

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.drop_prob == 0.0:
            return d
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        self.randomize(int(d[keys[0]].shape[0]))
        for key in keys:
            d[key] = zero_sequences(torch.as_tensor(d[key]), self.keep.tolist())
        return d
