"""A multimodal network for vector or sequence data: one encoder per view, late fusion, ``final``.

Layout (V views of widths ``view_dims``)::

    input B x sum(view_dims) --split--> V x (B x view_dims[v])           (encoder="mlp")
       or B x T x sum(view_dims) --split--> V x (B x T x view_dims[v])  (encoder="gru" / "transformer")
      encoders[v]: Linear -> act -> dropout -> Linear -> act,
                   or a GRU (last hidden state),
                   or Linear -> Transformer encoder (sinusoidal positions) -> mean over T   -> B x hidden
      fusion:      concat -> Linear(V * hidden, hidden) -> act, or sum, or mean  -> B x hidden
      final:       nn.Linear(hidden, out_features)
    output B x out_features

The sequence encoders are for word-aligned multimodal features such as CMU-MOSI and IEMOCAP
(:mod:`cggm_seg.apps.multiview.aligned`), whose modalities share one length T.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

from cggm_seg.networks.multi_branch import Fusion, MultiBranchNet, check_branch_names

__all__ = ["ENCODERS", "ViewEncoder", "SequenceEncoder", "MultiViewNet"]

#: the encoders of :class:`MultiViewNet`: vectors (``mlp``) or sequences (``gru``, ``transformer``)
ENCODERS: tuple[str, ...] = ("mlp", "gru", "transformer")


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


class SequenceEncoder(nn.Module):
    """The encoder of one sequence view: ``B x T x in_features`` -> ``B x hidden``.

    Args:
        in_features: features per step.
        hidden: output width (and the GRU's hidden size / the Transformer's model width).
        kind: ``"gru"`` (one GRU layer; its last hidden state) or ``"transformer"`` (a linear
            projection, sinusoidal position encoding, ``layers`` Transformer encoder layers of
            ``heads`` attention heads, then the mean over the steps).
        layers: GRU or Transformer layers. Defaults to 1.
        heads: attention heads of the Transformer (``hidden`` must divide by it). Defaults to 4.
        dropout: dropout inside the layers. Defaults to 0.
    """

    def __init__(
        self, in_features: int, hidden: int, kind: str = "gru", layers: int = 1, heads: int = 4,
        dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        if kind not in ("gru", "transformer"):
            raise ValueError(f"sequence encoder kind must be 'gru' or 'transformer', got {kind!r}.")
        self.kind = kind
        if kind == "gru":
            self.gru = nn.GRU(in_features, hidden, num_layers=layers, batch_first=True,
                              dropout=dropout if layers > 1 else 0.0)  # fmt: skip
        else:
            if hidden % heads:
                raise ValueError(f"the Transformer's width hidden={hidden} must divide by heads={heads}.")
            self.project = nn.Linear(in_features, hidden)
            layer = nn.TransformerEncoderLayer(
                hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, batch_first=True
            )
            self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    @staticmethod
    def positions(steps: int, width: int, device: torch.device) -> torch.Tensor:
        """Sinusoidal position encoding ``steps x width`` (Vaswani et al. 2017)."""
        position = torch.arange(steps, device=device, dtype=torch.float32)[:, None]
        rate = torch.exp(
            torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(1e4) / width)
        )
        pe = torch.zeros(steps, width, device=device)
        pe[:, 0::2] = torch.sin(position * rate)
        pe[:, 1::2] = torch.cos(position * rate)[:, : width // 2]
        return pe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gru":
            _, last = self.gru(x)
            return last[-1]
        h = self.project(x)
        h = h + self.positions(h.shape[1], h.shape[2], h.device).to(h.dtype)
        return self.transformer(h).mean(dim=1)


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
        encoder: ``"mlp"`` (vectors, default), ``"gru"`` or ``"transformer"`` (sequences; see
            :class:`SequenceEncoder`).
        encoder_layers, attention_heads: layers and attention heads of the sequence encoders.
        mask_missing: treat a view whose inputs are all zero in a sample as missing there and zero
            its encoder's output before fusion (:meth:`present_views`), as
            :class:`~cggm_seg.networks.MultiEncoderSegNet` does for a sequence; robust training's
            feature masking needs it. Defaults to False.

    Input ``B x sum(view_dims)`` (the views concatenated in order), or ``B x T x sum(view_dims)``
    for the sequence encoders; output ``B x out_features``.

    Attributes:
        view_names: the view names, in input order.
        view_dims: the view widths, in input order.
        hidden: each encoder's output width (= ``final.in_features``).
        out_features: output width.
        sequential: whether the input is ``B x T x sum(view_dims)``.
        mask_missing: whether missing views' features are zeroed before fusion.
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
        encoder: str = "mlp",
        encoder_layers: int = 1,
        attention_heads: int = 4,
        mask_missing: bool = False,
    ) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}.")
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
        self.encoder = encoder
        self.sequential = encoder != "mlp"
        self.mask_missing = bool(mask_missing)

        def make_encoder(width: int) -> nn.Module:
            if encoder == "mlp":
                return ViewEncoder(width, self.hidden, act, dropout)
            return SequenceEncoder(width, self.hidden, encoder, encoder_layers, attention_heads, dropout)

        self.encoders = nn.ModuleDict(
            {name: make_encoder(d) for name, d in zip(self.view_names, self.view_dims)}
        )
        projection = nn.Sequential(
            nn.Linear(len(self.view_names) * self.hidden, self.hidden), get_act_layer(act)
        )
        self.fusion = Fusion(fusion, projection)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.final = nn.Linear(self.hidden, self.out_features)
        # each input column's view, for zero-filling whole views (not saved: it follows view_dims)
        columns = torch.repeat_interleave(torch.arange(len(self.view_dims)), torch.tensor(self.view_dims))
        self.register_buffer("view_of_column", columns, persistent=False)

    branch_axis = "V"
    __jit_unused_properties__ = ["sample_shape"]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample of the smallest input: ``(in_features,)``, or ``(1, in_features)``."""
        return (1, self.in_features) if self.sequential else (self.in_features,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x sum(view_dims)`` (or ``B x T x sum(view_dims)``) -> ``B x out_features``."""
        features = self._encode(x)
        if self.mask_missing:
            features = _mask(features, self.present_views(x))
        return self._predict(features)

    def present_views(self, x: torch.Tensor) -> torch.Tensor:
        """``B x V`` booleans: a view is present in a sample where any of its inputs is non-zero.

        The toolkit's contract for a missing view: it is zero-filled. A sample whose every input is
        zero has nothing known to be missing: all its views count as present.
        """
        views = torch.split(x.detach(), self.view_dims, dim=-1)
        present = torch.stack([v.reshape(v.shape[0], -1).ne(0).any(dim=1) for v in views], dim=1)
        return present | ~present.any(dim=1, keepdim=True)

    def keep_views(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``x`` with the views that ``keep`` (``B x V`` booleans) does not keep zero-filled.

        Raises:
            ValueError: a keep of the wrong shape.
        """
        if tuple(keep.shape) != (x.shape[0], len(self.view_dims)):
            raise ValueError(
                f"keep must be B x V = {[x.shape[0], len(self.view_dims)]}, got {list(keep.shape)}."
            )
        weight = keep.to(device=x.device, dtype=torch.bool)[:, self.view_of_column.to(x.device)].to(x.dtype)
        return x * (weight[:, None, :] if x.dim() == 3 else weight)

    def _present(self, x: torch.Tensor) -> torch.Tensor:
        return self.present_views(x)

    def _masked(self, features: list[torch.Tensor], present: torch.Tensor) -> list[torch.Tensor]:
        return _mask(features, present)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        rank = 3 if self.sequential else 2
        if x.dim() != rank or x.shape[-1] != self.in_features:
            shape = f"B x T x {self.in_features}" if self.sequential else f"B x {self.in_features}"
            raise ValueError(
                f"expected input {shape} (views {self.view_names} of widths {self.view_dims} "
                f"concatenated), got shape {list(x.shape)}."
            )
        views = torch.split(x, self.view_dims, dim=-1)
        features: list[torch.Tensor] = []
        index = 0
        for encoder in self.encoders.values():
            features.append(encoder(views[index]))
            index += 1
        return features

    def _predict(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.final(self.dropout(self.fusion(features)))


def _mask(features: list[torch.Tensor], present: torch.Tensor) -> list[torch.Tensor]:
    """Each view's ``B x hidden`` features times 0 in the samples where it is not ``present``."""
    if bool(present.all()):
        return features
    return [f * present[:, v : v + 1].to(f.dtype) for v, f in enumerate(features)]
