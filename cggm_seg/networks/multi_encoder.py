"""A 3D segmentation network with one encoder per MRI sequence, fused at every scale.

Layout (``L = len(channels)`` levels, level 0 at full resolution, level ``l`` at ``1 / 2**l``)::

    input B x M x D x H x W --slice--> M x (B x 1 x D x H x W)
      encoders[m]: stem conv -> ResBlocks | (stride-2 conv -> ResBlocks) x (L - 1)
                   -> [B x channels[l] x D/2**l x H/2**l x W/2**l for l in 0..L-1]   (fine to coarse)
      fusions[l]:  the M maps of level l -> one map of channels[l] (concat + 1x1x1 conv, sum or mean)
      decoder:     from the coarsest fused map: 1x1x1 conv + x2 upsample + fused skip + ResBlocks
      final:       norm + act, then ``final = nn.Conv3d(channels[0], out_channels, 1)``
    output B x out_channels x D x H x W (region logits TC, WT, ET)

The residual blocks are SegResNet's (:class:`monai.networks.blocks.ResBlock`, pre-activation),
as in MONAI's model-zoo BraTS bundle; with one modality and no fusion this is a SegResNet. Every
layer is plain MONAI / PyTorch unless ``cpu_fast_paths=True`` (the CPU bundles set it): then the
3x3x3 stride-1 convolutions are :class:`~cggm_seg.networks.depth_split.DepthSplitConv3d` (the
same maths, 2-4x faster steps on a CPU at batch size 1) and the 1x1x1 convolutions
:class:`~cggm_seg.networks.pointwise.PointwiseConv3d` (matrix products on a CPU). Both hold the
same parameters and ``state_dict`` as ``nn.Conv3d``, so a checkpoint loads either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution, ResBlock, UpSample
from monai.networks.layers.factories import Dropout
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from cggm_seg.networks.depth_split import use_depth_split_convs
from cggm_seg.networks.multi_branch import Fusion, MultiBranchNet, check_branch_names
from cggm_seg.networks.pointwise import use_pointwise_convs

__all__ = ["PRESETS", "ModalityEncoder", "MultiEncoderSegNet", "present_channels"]


def present_channels(x: torch.Tensor) -> torch.Tensor:
    """Which input channels carry a sequence, per sample: ``B x C`` booleans.

    The toolkit's contract for a missing sequence: its channel is zero-filled. A channel is present
    when any of its voxels is non-zero; in a sample (or a sliding window) where every channel is
    zero, nothing is known to be missing and all are reported present.
    """
    present = x.detach().flatten(2).ne(0).any(dim=-1)
    return present | ~present.any(dim=1, keepdim=True)


#: Named settings of :class:`MultiEncoderSegNet` (use :meth:`MultiEncoderSegNet.from_preset`).
#:
#: - ``cpu_small`` (the constructor's defaults): 4 levels of 8-64 channels, one residual block per
#:   level below full resolution; 1.5 M parameters; sized for training on 2 CPU cores at 64^3 to
#:   96^3 crops.
#: - ``gpu_paper``: SegResNet scale as in MONAI's model-zoo ``brats_mri_segmentation`` bundle
#:   (16 initial filters, blocks 1-2-2-4 down, 1-1-1 up) for each modality; 18 M parameters; for
#:   128^3 or larger crops on a GPU.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu_small": {"channels": (8, 16, 32, 64), "blocks_down": (0, 1, 1, 1), "blocks_up": (1, 1, 0)},
    "gpu_paper": {"channels": (16, 32, 64, 128), "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)},
}


class ModalityEncoder(nn.Module):
    """The encoder of one modality: a SegResNet-style residual encoder returning every level.

    Args:
        in_channels: input channels (1: one MRI sequence).
        channels: output channels per level, fine to coarse; level ``l > 0`` halves the resolution
            with a stride-2 3x3x3 convolution.
        blocks_down: residual blocks per level (``len(channels)`` entries, each >= 0).
        norm: normalisation type and arguments (MONAI factory form).
        act: activation type and arguments.
        dropout: dropout probability after the stem convolution; ``None`` for none.

    Forward: ``B x in_channels x D x H x W`` -> a list of ``len(channels)`` maps,
    ``B x channels[l] x D/2**l x H/2**l x W/2**l`` (fine to coarse).
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        blocks_down: Sequence[int],
        norm: tuple | str,
        act: tuple | str,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.stem = Convolution(3, in_channels, channels[0], kernel_size=3, conv_only=True, bias=False)
        self.dropout = Dropout[Dropout.DROPOUT, 3](dropout) if dropout else nn.Identity()
        self.levels = nn.ModuleList()
        for level, (width, n_blocks) in enumerate(zip(channels, blocks_down)):
            down: nn.Module = (
                Convolution(
                    3, channels[level - 1], width, strides=2, kernel_size=3, conv_only=True, bias=False
                )
                if level > 0
                else nn.Identity()
            )
            blocks = [ResBlock(3, width, norm=norm, act=act) for _ in range(n_blocks)]
            self.levels.append(nn.Sequential(down, *blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.dropout(self.stem(x))
        features: list[torch.Tensor] = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class MultiEncoderSegNet(MultiBranchNet):
    """Multi-encoder 3D segmentation network: one encoder per modality, fusion at every scale.

    Follows the cggm_seg network contract (:mod:`cggm_seg.networks.multi_branch`): one input, one
    output, per-modality encoders in ``encoders``, last layer ``final``.

    Args:
        modalities: modality names in input-channel order. Defaults to the canonical BraTS order
            ``("t1", "t1ce", "t2", "flair")``.
        out_channels: output channels (region logits TC, WT, ET). Defaults to 3.
        channels: channels per level, fine to coarse, for every encoder and the decoder.
            Defaults to ``(8, 16, 32, 64)``.
        blocks_down: residual blocks per encoder level. Defaults to ``(0, 1, 1, 1)``: no residual
            block at full resolution, where a 3D convolution costs most on a CPU.
        blocks_up: residual blocks per decoder level, from the second-coarsest level to full
            resolution (``len(channels) - 1`` entries). Defaults to ``(1, 1, 0)``.
        fusion: ``"concat"`` (concatenation + 1x1x1 conv), ``"sum"`` or ``"mean"``. Defaults to
            ``"concat"``.
        norm: normalisation type and arguments. Defaults to ``("GROUP", {"num_groups": 8})``
            (SegResNet's); every entry of ``channels`` must be divisible by ``num_groups``.
        act: activation type and arguments. Defaults to ``("RELU", {"inplace": True})``.
        dropout: dropout probability after each encoder's stem convolution. Defaults to ``None``.
        cpu_fast_paths: swap in the CPU fast paths described in the module docstring. Defaults to
            False (plain ``nn.Conv3d``; the GPU preset and exported models stay plain PyTorch).
        mask_missing: treat a sequence whose input channel is zero everywhere in a sample as
            missing and set its features to zero at every level before fusion (feature-level
            masking, :func:`present_channels`), so that the fusion and decoder see exactly "absent"
            rather than what an encoder makes of an empty volume. A sample whose channels are all
            zero masks nothing. Defaults to False.

    Input ``B x M x D x H x W`` with ``D, H, W`` divisible by ``2 ** (len(channels) - 1)``; output
    ``B x out_channels x D x H x W``.

    Attributes:
        modalities: the modality names, in input-channel order.
        feature_channels: each encoder's output channels per scale, fine to coarse (= ``channels``).
        feature_strides: each scale's downsampling factor relative to the input, ``2 ** l``.
        final_channels: input channels of ``final`` (= ``channels[0]``).
        out_channels: output channels.
        final_layer_name: ``"final"``.

    Raises:
        ValueError: for an unknown fusion, invalid modality names, or ``blocks_down`` /
            ``blocks_up`` of the wrong length; in forward, for the wrong number of input channels
            or a spatial size not divisible by ``2 ** (len(channels) - 1)``.

    Example::

        net = MultiEncoderSegNet()                          # cpu_small
        net = MultiEncoderSegNet.from_preset("gpu_paper", fusion="sum")
        logits = net(torch.randn(1, 4, 64, 64, 64))         # 1 x 3 x 64 x 64 x 64
    """

    def __init__(
        self,
        modalities: Sequence[str] = ("t1", "t1ce", "t2", "flair"),
        out_channels: int = 3,
        channels: Sequence[int] = (8, 16, 32, 64),
        blocks_down: Sequence[int] = (0, 1, 1, 1),
        blocks_up: Sequence[int] = (1, 1, 0),
        fusion: str = "concat",
        norm: tuple | str = ("GROUP", {"num_groups": 8}),
        act: tuple | str = ("RELU", {"inplace": True}),
        dropout: float | None = None,
        cpu_fast_paths: bool = False,
        mask_missing: bool = False,
    ) -> None:
        super().__init__()
        self.modalities = check_branch_names(modalities, "modalities")
        self.cpu_fast_paths = bool(cpu_fast_paths)
        self.mask_missing = bool(mask_missing)
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must have at least one level.")
        if len(blocks_down) != len(channels):
            raise ValueError(
                f"blocks_down needs one entry per level ({len(channels)}), got {tuple(blocks_down)}."
            )
        if len(blocks_up) != len(channels) - 1:
            raise ValueError(
                f"blocks_up needs one entry per decoder level ({len(channels) - 1}), got {tuple(blocks_up)}."
            )
        self.out_channels = int(out_channels)
        self.feature_channels = channels
        self.feature_strides = tuple(2**level for level in range(len(channels)))
        self.final_channels = channels[0]
        self.divisor = 2 ** (len(channels) - 1)

        self.encoders = nn.ModuleDict(
            {m: ModalityEncoder(1, channels, blocks_down, norm, act, dropout) for m in self.modalities}
        )
        n_modalities = len(self.modalities)
        self.fusions = nn.ModuleList(
            [Fusion(fusion, nn.Conv3d(n_modalities * c, c, kernel_size=1)) for c in channels]
        )
        # Decoder modules are stored coarse to fine: up_samples[i] brings level L-1-i to level L-2-i.
        self.up_samples = nn.ModuleList()
        self.up_layers = nn.ModuleList()
        for level in range(len(channels) - 1, 0, -1):
            self.up_samples.append(
                nn.Sequential(
                    Convolution(
                        3, channels[level], channels[level - 1], kernel_size=1, conv_only=True, bias=False
                    ),
                    UpSample(
                        3, channels[level - 1], scale_factor=2, mode="nontrainable", interp_mode="trilinear"
                    ),
                )
            )
            n_blocks = blocks_up[len(channels) - 1 - level]
            self.up_layers.append(
                nn.Sequential(
                    *[ResBlock(3, channels[level - 1], norm=norm, act=act) for _ in range(n_blocks)]
                )
            )
        self.final_norm = get_norm_layer(name=norm, spatial_dims=3, channels=channels[0])
        self.final_act = get_act_layer(act)
        self.final = nn.Conv3d(channels[0], self.out_channels, kernel_size=1)
        if self.cpu_fast_paths:
            use_depth_split_convs(self)
            use_pointwise_convs(self)

    @classmethod
    def from_preset(cls, preset: str, **kwargs: Any) -> MultiEncoderSegNet:
        """Build the network from a named setting of :data:`PRESETS`; ``kwargs`` override it.

        Raises:
            ValueError: for an unknown preset name.
        """
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}.")
        return cls(**{**PRESETS[preset], **kwargs})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x M x D x H x W`` -> ``B x out_channels x D x H x W`` region logits."""
        per_modality = self._encode(x)
        if self.mask_missing:
            per_modality = _mask(per_modality, present_channels(x))
        return self._predict(per_modality)

    def _present(self, x: torch.Tensor) -> torch.Tensor:
        return present_channels(x)

    def _masked(
        self, per_modality: list[list[torch.Tensor]], present: torch.Tensor
    ) -> list[list[torch.Tensor]]:
        return _mask(per_modality, present)

    def _encode(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        if x.dim() != 5 or x.shape[1] != len(self.modalities):
            raise ValueError(
                f"expected input B x {len(self.modalities)} x D x H x W (modalities {self.modalities}), "
                f"got shape {list(x.shape)}."
            )
        for size in x.shape[2:]:
            if size % self.divisor != 0:
                raise ValueError(
                    f"spatial size {list(x.shape[2:])} must be divisible by {self.divisor} "
                    f"(2 ** (levels - 1)); pad or crop the input, e.g. with DivisiblePadd(k={self.divisor})."
                )
        per_modality: list[list[torch.Tensor]] = []
        index = 0
        for encoder in self.encoders.values():
            per_modality.append(encoder(x[:, index : index + 1]))
            index += 1
        return per_modality

    def _predict(self, per_modality: list[list[torch.Tensor]]) -> torch.Tensor:
        fused: list[torch.Tensor] = []
        for level, fusion in enumerate(self.fusions):
            fused.append(fusion([features[level] for features in per_modality]))

        y = fused[-1]
        for i, (up, layer) in enumerate(zip(self.up_samples, self.up_layers)):
            y = layer(up(y) + fused[-2 - i])
        return self.final(self.final_act(self.final_norm(y)))


def _mask(per_modality: list[list[torch.Tensor]], present: torch.Tensor) -> list[list[torch.Tensor]]:
    """Each modality's features times 0 in the samples where it is not ``present`` (``B x M``);
    the features themselves where every sample has every modality."""
    if bool(present.all()):
        return per_modality
    masked: list[list[torch.Tensor]] = []
    for m, features in enumerate(per_modality):
        weight = present[:, m].to(features[0].dtype).view(-1, 1, 1, 1, 1)
        masked.append([f * weight for f in features])
    return masked
