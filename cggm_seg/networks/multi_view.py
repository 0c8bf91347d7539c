"""A multimodal network for vector data: one small MLP encoder per view, late fusion, ``final``.

Layout (V views of widths ``view_dims``)::

    input B x sum(view_dims) --split--> V x (B x view_dims[v])
      encoders[v]: Linear -> act -> dropout -> Linear -> act      -> B x hidden
      fusion:      concat -> Linear(V * hidden, hidden) -> act, or sum, or mean  -> B x hidden
      final:       nn.Linear(hidden, out_features)
    output B x out_features
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

from cggm_seg.networks.multi_branch import Fusion, MultiBranchNet, check_branch_names

__all__ = ["ViewEncoder", "MultiViewNet"]


class ViewEncoder(nn.Sequential):
    """The encoder of one view: ``B x in_features`` -> ``B x hidden`` (two linear layers).

    Args:
        in_features: width of the view.
        hidden: output width.
        act: activation type and arguments.
        dropout: dropout probability between the two layers (0 for none).
    """

    def __init__(self, in_features: int, hidden: int, act: tuple | str, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(in_features, hidden),
            get_act_layer(act),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Linear(hidden, hidden),
            get_act_layer(act),
        )


class MultiViewNet(MultiBranchNet):
    """Multi-encoder network for classification or regression on concatenated feature views.

    Follows the cggm_seg network contract (:mod:`cggm_seg.networks.multi_branch`): one input, one
    output, per-view encoders in ``encoders``, last layer ``final``.

    Args:
        view_dims: width of each view, in input order: a sequence (views named ``"view0"``,
            ``"view1"``, ...) or a mapping view name -> width (its order is the input order).
        out_features: outputs (class logits, or regression targets). Defaults to 1.
        hidden: width of each encoder's output, of the fused feature and of ``final``'s input.
            Defaults to 32.
        fusion: ``"concat"`` (concatenate, then ``Linear(V * hidden, hidden)`` + act), ``"sum"``
            or ``"mean"``. Defaults to ``"concat"``.
        act: activation type and arguments. Defaults to ``"RELU"``.
        dropout: dropout probability inside each encoder and after fusion. Defaults to 0.

    Input ``B x sum(view_dims)`` (the views concatenated in order); output ``B x out_features``.

    Attributes:
        view_names: the view names, in input order.
        view_dims: the view widths, in input order.
        hidden: each encoder's output width (= ``final.in_features``).
        out_features: output width.
        final_layer_name: ``"final"``.

    Raises:
        ValueError: for an unknown fusion, invalid view names or a non-positive width; in forward,
            for an input that is not ``B x sum(view_dims)``.
    """

    def __init__(
        self,
        view_dims: Sequence[int] | Mapping[str, int],
        out_features: int = 1,
        hidden: int = 32,
        fusion: str = "concat",
        act: tuple | str = "RELU",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(view_dims, Mapping):
            names, dims = tuple(view_dims.keys()), tuple(view_dims.values())
        else:
            dims = tuple(view_dims)
            names = tuple(f"view{i}" for i in range(len(dims)))
        self.view_names = check_branch_names(names, "views")
        if any(int(d) < 1 for d in dims):
            raise ValueError(f"every view width must be >= 1, got {dict(zip(names, dims))}.")
        self.view_dims = [int(d) for d in dims]
        self.in_features = sum(self.view_dims)
        self.hidden = int(hidden)
        self.out_features = int(out_features)

        self.encoders = nn.ModuleDict(
            {
                name: ViewEncoder(d, self.hidden, act, dropout)
                for name, d in zip(self.view_names, self.view_dims)
            }
        )
        projection = nn.Sequential(
            nn.Linear(len(self.view_names) * self.hidden, self.hidden), get_act_layer(act)
        )
        self.fusion = Fusion(fusion, projection)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.final = nn.Linear(self.hidden, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x sum(view_dims)`` -> ``B x out_features``."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"expected input B x {self.in_features} (views {self.view_names} of widths {self.view_dims} "
                f"concatenated), got shape {list(x.shape)}."
            )
        views = torch.split(x, self.view_dims, dim=1)
        features: list[torch.Tensor] = []
        index = 0
        for encoder in self.encoders.values():
            features.append(encoder(views[index]))
            index += 1
        return self.final(self.dropout(self.fusion(features)))
