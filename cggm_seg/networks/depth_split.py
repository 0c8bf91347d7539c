"""Fast 3D convolutions on a CPU for a batch of one.

PyTorch (checked on 2.13) runs a float32 CPU ``conv3d`` with its reference im2col kernel
(``aten::slow_conv3d``) instead of oneDNN when the batch is 1 and ``N * C * D * H <= 20480``
(``use_mkldnn`` in ``aten/src/ATen/native/Convolution.cpp``). That is most layers of a 3D network
below full resolution at the crop sizes a CPU trains on, and the reference kernel is far slower:
forward + backward of a 16-channel 3x3x3 convolution at 32^3 takes 0.15 s on one core against
0.011 s through oneDNN. The same convolution on a batch of two takes the oneDNN path.

:class:`DepthSplitConv3d` therefore cuts a batch-of-one input into two overlapping halves along
depth (each with the ``kernel - 1`` slices of context it needs), convolves them as a batch of two
and joins the results: the same output (up to float rounding), through the fast kernel.
:func:`use_depth_split_convs` swaps it into a built network; on a GPU, for batches > 1 and for
large inputs nothing changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cggm_seg.networks.conv_swap import swap_conv3d

__all__ = ["DepthSplitConv3d", "use_depth_split_convs"]

#: PyTorch sends a batch-of-one CPU convolution to oneDNN only above this ``N * C * D * H``.
ONEDNN_MIN_NCDH = 20480


class DepthSplitConv3d(nn.Conv3d):
    """``nn.Conv3d`` (stride 1, dilation 1, zero padding given as integers) that convolves a CPU
    batch of one as two depth halves in a batch of two, where PyTorch's slow kernel would run.

    Same constructor, parameters and ``state_dict`` as ``nn.Conv3d``.
    Forward: ``B x C_in x D x H x W`` -> ``B x C_out x D' x H' x W'``, as ``nn.Conv3d``.

    Raises:
        ValueError: for a stride or dilation other than 1, a padding mode other than ``"zeros"``
            or a string padding.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not _splittable(self):
            raise ValueError(
                "DepthSplitConv3d needs stride 1, dilation 1 and integer zero padding, got "
                f"stride={self.stride}, dilation={self.dilation}, padding={self.padding!r}, "
                f"padding_mode={self.padding_mode!r}."
            )
        # Plain ints (``nn.Conv3d.padding`` may be a string to TorchScript).
        self.depth_kernel = int(self.kernel_size[0])
        self.depth_padding = int(self.padding[0])
        self.hw_padding = [int(self.padding[1]), int(self.padding[2])]
        self.max_ncdh = ONEDNN_MIN_NCDH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.shape[0] == 1
            and x.device.type == "cpu"
            and x.shape[1] * x.shape[2] * x.shape[3] <= self.max_ncdh
        ):
            depth_out = x.shape[2] + 2 * self.depth_padding - self.depth_kernel + 1
            if depth_out >= 2:
                return self._split_forward(x, depth_out)
        return self._conv_forward(x, self.weight, self.bias)

    def _split_forward(self, x: torch.Tensor, depth_out: int) -> torch.Tensor:
        half = (depth_out + 1) // 2
        context = self.depth_kernel - 1
        x = F.pad(x, [0, 0, 0, 0, self.depth_padding, self.depth_padding])
        # Output slices [0, half) need input [0, half + context); [depth_out - half, depth_out) the rest.
        halves = torch.cat([x[:, :, : half + context], x[:, :, depth_out - half :]], dim=0)
        y = F.conv3d(halves, self.weight, self.bias, 1, [0] + self.hw_padding, 1, self.groups)
        return torch.cat([y[:1], y[1:, :, 2 * half - depth_out :]], dim=2)


def _splittable(conv: nn.Conv3d) -> bool:
    return (
        conv.stride == (1, 1, 1)
        and conv.dilation == (1, 1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def use_depth_split_convs(module: nn.Module) -> nn.Module:
    """Replace, in place, every plain ``nn.Conv3d`` of ``module`` that has a kernel larger than 1,
    stride 1, dilation 1 and integer zero padding by a :class:`DepthSplitConv3d` holding the same
    parameter tensors (names, ``state_dict`` and optimizer references are unchanged).

    Works on any network (MONAI's SegResNet, UNet, ...), e.g. the single-network baselines.

    Returns:
        ``module`` itself.
    """
    return swap_conv3d(
        module,
        lambda conv: conv.kernel_size != (1, 1, 1) and _splittable(conv),
        lambda conv: DepthSplitConv3d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            padding=conv.padding,
            groups=conv.groups,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        ),
    )
