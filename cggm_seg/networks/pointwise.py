"""Fast 1x1x1 (pointwise) 3D convolutions on a CPU.

A 1x1x1 convolution is a matrix product per sample: ``C_out x C_in`` weights times the
``C_in x (D * H * W)`` voxels. PyTorch (checked on 2.13) does not run it that way on a CPU: with
more than one thread it sends it to oneDNN above a small size (``use_mkldnn`` in
``aten/src/ATen/native/Convolution.cpp``), and with one thread to its reference im2col kernel. For
the few channels of the networks here oneDNN is far slower than the matrix product.

:class:`PointwiseConv3d` computes the same convolution with :func:`torch.baddbmm` on a CPU;
:func:`use_pointwise_convs` swaps it into a built network. On a GPU nothing changes. The result is
returned through the private ``aten::_unsafe_view`` (see :meth:`PointwiseConv3d.forward`) where
this PyTorch build has it; where it does not, the layer falls back to ``nn.Conv3d``'s own
computation (:data:`HAS_UNSAFE_VIEW`).
"""

from __future__ import annotations

import torch
from torch import nn

from cggm_seg.networks.conv_swap import swap_conv3d

__all__ = ["HAS_UNSAFE_VIEW", "PointwiseConv3d", "use_pointwise_convs"]


def _has_unsafe_view() -> bool:
    try:
        return hasattr(torch.ops.aten, "_unsafe_view")
    except (AttributeError, RuntimeError):
        return False


#: Whether this PyTorch build has ``aten::_unsafe_view``; without it the fast path is off.
HAS_UNSAFE_VIEW: bool = _has_unsafe_view()


class PointwiseConv3d(nn.Conv3d):
    """``nn.Conv3d`` with a 1x1x1 kernel (stride 1, no padding, one group) that runs on a CPU as
    one matrix product per sample.

    Same constructor, parameters and ``state_dict`` as ``nn.Conv3d``.
    Forward: ``B x C_in x D x H x W`` -> ``B x C_out x D x H x W``, as ``nn.Conv3d``; on a GPU, for
    an unbatched input, or where :data:`HAS_UNSAFE_VIEW` is False, ``nn.Conv3d``'s own computation.

    Raises:
        ValueError: for a kernel other than 1x1x1, a stride, dilation or group count other than 1,
            or any padding.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fast = HAS_UNSAFE_VIEW  # checked when the layer is built (a plain bool for TorchScript)
        if not _pointwise(self):
            raise ValueError(
                "PointwiseConv3d needs kernel 1, stride 1, dilation 1, padding 0 and groups 1, got "
                f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}, "
                f"padding={self.padding!r}, groups={self.groups}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 5 or not self.fast:
            return self._conv_forward(x, self.weight, self.bias)
        n = x.shape[0]
        voxels = x.reshape(n, self.in_channels, -1)
        weight = self.weight.view(1, self.out_channels, self.in_channels).expand(n, -1, -1)
        bias = self.bias
        if bias is None:
            y = torch.bmm(weight, voxels)
        else:
            y = torch.baddbmm(bias.view(1, -1, 1), weight, voxels)
        # Not a view of the product (as matmul does it): an in-place operation on the output, such
        # as an in-place activation, would otherwise cost a copy of it in backward.
        return torch.ops.aten._unsafe_view(y, [n, self.out_channels, x.shape[2], x.shape[3], x.shape[4]])


def _pointwise(conv: nn.Conv3d) -> bool:
    return (
        conv.kernel_size == (1, 1, 1)
        and conv.stride == (1, 1, 1)
        and conv.dilation == (1, 1, 1)
        and conv.groups == 1
        and not isinstance(conv.padding, str)
        and tuple(conv.padding) == (0, 0, 0)
    )


def use_pointwise_convs(module: nn.Module) -> nn.Module:
    """Replace, in place, every plain ``nn.Conv3d`` of ``module`` with a 1x1x1 kernel, stride 1,
    dilation 1, no padding and one group by a :class:`PointwiseConv3d` holding the same parameter
    tensors (names, ``state_dict`` and optimizer references are unchanged).

    Works on any network (MONAI's SegResNet, UNet, ...).

    Returns:
        ``module`` itself.
    """
    return swap_conv3d(
        module,
        _pointwise,
        lambda conv: PointwiseConv3d(
            conv.in_channels,
            conv.out_channels,
            kernel_size=1,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        ),
    )
