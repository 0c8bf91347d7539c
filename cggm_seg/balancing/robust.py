"""Robust training: a network that keeps working when any sequence (or view) is missing.

A recipe (:class:`RobustTraining`) is built from its settings and composes with any balancing
method. Each training step it may

- draw, per sample, the sequences the network sees (:func:`sample_subsets`): each dropped with
  probability ``drop`` (``"bernoulli"``; the empty subset is redrawn, so that ``drop=0.5`` is
  uniform over the ``2^M - 1`` non-empty subsets, ``"uniform"``), or ``k ~ U{1..M}`` sequences
  kept (``"size"``); the others are zero-filled, the toolkit's contract for a missing sequence
  (a network built with ``mask_missing=True`` also zeroes their features before fusion; a
  network with a ``keep_views(x, keep)`` method, such as :class:`~cggm_seg.networks.MultiViewNet`,
  zero-fills its own views, otherwise each input channel is a sequence);
- train the full input beside that subset view (``full_view``), the subset view also pulled
  toward the full view's detached prediction (``distill_weight``, :func:`consistency`);
- train one light head per sequence on its encoder's features, with the task loss,
  *not* detached, so that every encoder learns its sequence (``sep_weight``);
- keep the first ``warmup_epochs`` epochs on the full input only.

The total loss of a step is ``L(full) + L(subset) + distill_weight * C(subset, full)
+ sum_i w_i L(head_i)`` with the terms the recipe turns on (``docs/methods.md``).
:class:`RobustIteration` is that step as a ``SupervisedTrainer``'s ``iteration_update``; it fires
the trainer's iteration events, so a :class:`~cggm_seg.handlers.BalancingHandler` runs unchanged
(its heads observe the features of the step's last forward: the full view when there is one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cggm_seg.balancing.branches import BranchSpec, FeatureTap, branch_parameters
from cggm_seg.balancing.head_trainer import pool_target
from cggm_seg.balancing.method import pick_entry

__all__ = [
    "SAMPLERS",
    "CONSISTENCIES",
    "RobustTraining",
    "RobustIteration",
    "sample_subsets",
    "consistency",
    "pick_recipe",
    "trainable_parameters",
]

#: subset samplers: ``"bernoulli"`` (each sequence dropped with its probability), ``"uniform"``
#: (bernoulli at 0.5: uniform over the non-empty subsets), ``"size"`` (k ~ U{1..M} kept),
#: ``"none"`` (the full input only: per-sequence heads without missing sequences)
SAMPLERS = ("bernoulli", "uniform", "size", "none")
#: the consistency term's forms (:func:`consistency`)
CONSISTENCIES = ("bce", "mse", "kl", "softmax_kl", "l2")


def sample_subsets(
    batch: int,
    drop: torch.Tensor,
    kind: str = "bernoulli",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The sequences each sample keeps: ``batch x M`` booleans, at least one True per row.

    Args:
        batch: samples.
        drop: shape ``M``, each sequence's probability of being dropped (``"bernoulli"``); rows
            that keep nothing are drawn again, so each row follows the product distribution
            conditioned on a non-empty subset (uniform over the ``2^M - 1`` subsets at 0.5).
        kind: ``"bernoulli"`` or ``"size"``: ``k ~ U{1..M}``, then ``k`` sequences drawn without
            replacement, each equally likely (``drop`` unused). (``"uniform"`` is
            ``"bernoulli"`` at 0.5: the caller passes that ``drop``.)
        generator: the random generator (``None``: torch's global one, which a bundle seeds and
            checkpoints).

    Raises:
        ValueError: an unknown kind, or drop probabilities outside [0, 1).
    """
    drop = torch.as_tensor(drop, dtype=torch.float64)
    m = drop.numel()
    if kind == "size":
        weights = torch.ones(m, dtype=torch.float64)
        keep = torch.zeros(batch, m, dtype=torch.bool)
        sizes = torch.randint(1, m + 1, (batch,), generator=generator)
        for b in range(batch):
            keep[b, torch.multinomial(weights, int(sizes[b]), replacement=False, generator=generator)] = True
        return keep
    if kind != "bernoulli":
        raise ValueError(f"kind must be 'bernoulli' or 'size', got {kind!r}.")
    if bool(((drop < 0) | (drop >= 1)).any()):
        raise ValueError(f"drop probabilities must lie in [0, 1), got {drop.tolist()}.")
    keep = torch.rand(batch, m, generator=generator, dtype=torch.float64) >= drop
    empty = ~keep.any(dim=1)
    while bool(empty.any()):  # rejection: the conditional distribution exactly
        keep[empty] = torch.rand(int(empty.sum()), m, generator=generator, dtype=torch.float64) >= drop
        empty = ~keep.any(dim=1)
    return keep


def consistency(
    student: torch.Tensor, teacher: torch.Tensor, form: str = "bce", temperature: float = 1.0
) -> torch.Tensor:
    """The subset view's distance to the full view's prediction (logits in, the teacher detached).

    - ``"bce"``: binary cross-entropy of ``sigmoid(student / T)`` against ``sigmoid(teacher / T)``
      (region outputs, each voxel and channel a Bernoulli);
    - ``"mse"``: mean squared difference of the two probabilities;
    - ``"kl"``: ``T^2 * KL(p_teacher || p_student)`` of the Bernoulli probabilities at temperature
      ``T`` (PASSION's form), averaged over voxels and channels;
    - ``"softmax_kl"``: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over the classes
      (dimension 1), averaged over the samples (class logits);
    - ``"l2"``: mean squared difference of the raw outputs (regression).

    Raises:
        ValueError: an unknown form or ``temperature <= 0``.
    """
    if form not in CONSISTENCIES:
        raise ValueError(f"form must be one of {CONSISTENCIES}, got {form!r}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if form == "l2":
        return F.mse_loss(student.float(), teacher.detach().float())
    student = student.float() / temperature
    if form == "softmax_kl":
        log_q = F.log_softmax(student, dim=1)
        log_p = F.log_softmax(teacher.detach().float() / temperature, dim=1)
        return temperature**2 * (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
    target = torch.sigmoid(teacher.detach().float() / temperature)
    if form == "bce":
        return F.binary_cross_entropy_with_logits(student, target)
    if form == "mse":
        return F.mse_loss(torch.sigmoid(student), target)
    log_p, log_1p = F.logsigmoid(student), F.logsigmoid(-student)
    eps = 1e-7
    t = target.clamp(eps, 1 - eps)
    kl = t * (t.log() - log_p) + (1 - t) * ((1 - t).log() - log_1p)
    return temperature**2 * kl.mean()


class RobustTraining:
    """A robust-training recipe: its settings, checked when a bundle builds it.

    Args:
        sampler: ``"uniform"``, ``"bernoulli"``, ``"size"`` (:func:`sample_subsets`) or
            ``"none"`` (no subset view: the full input only).
        drop: each sequence's probability of being dropped (``"bernoulli"``; ``"uniform"`` is 0.5).
        warmup_epochs: epochs on the full input only before subsets are drawn.
        feature_masking: the network zeroes a missing sequence's features before fusion (it must
            be built so, e.g. ``MultiEncoderSegNet(mask_missing=True)``); ``False``: zero-filled
            input only, which any network takes.
        full_view: train the full input beside the subset view each step.
        subset_views: subset views drawn per step beside the full view (their losses averaged).
            With feature masking and a network that has ``forward_views`` the encoders run once
            for all views and only the fusion and decoder run per view.
        distill_weight: weight of :func:`consistency` from the subset view to the full view
            (needs ``full_view``).
        distill: the consistency's form (:data:`CONSISTENCIES`).
        temperature: the consistency's temperature.
        sep_weight: weight of each sequence head's task loss into its encoder (0: no heads).
        sep_level: the level the per-sequence heads predict at (``make_heads(level=...)``).

    Raises:
        ValueError: any setting out of range, or ``distill_weight > 0`` without ``full_view``.
    """

    def __init__(
        self,
        sampler: str = "uniform",
        drop: float = 0.5,
        warmup_epochs: int = 0,
        feature_masking: bool = True,
        full_view: bool = False,
        subset_views: int = 1,
        distill_weight: float = 0.0,
        distill: str = "bce",
        temperature: float = 1.0,
        sep_weight: float = 0.0,
        sep_level: int = 1,
    ) -> None:
        if int(subset_views) != subset_views or subset_views < 1:
            raise ValueError(f"subset_views must be an integer >= 1, got {subset_views!r}.")
        if subset_views > 1 and not full_view:
            raise ValueError("subset_views > 1 draws several views beside the full view: set full_view=True.")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
        if not 0 <= drop < 1:
            raise ValueError(f"drop must lie in [0, 1), got {drop}.")
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}.")
        if distill not in CONSISTENCIES:
            raise ValueError(f"distill must be one of {CONSISTENCIES}, got {distill!r}.")
        for name, value in (("distill_weight", distill_weight), ("sep_weight", sep_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if sampler == "none" and (full_view or distill_weight > 0):
            raise ValueError("sampler='none' draws no subset view: full_view and distill_weight need one.")
        if distill_weight > 0 and not full_view:
            raise ValueError(
                "distill_weight > 0 distils the subset view toward the full view: set full_view=True."
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.sampler = sampler
        self.drop = 0.5 if sampler == "uniform" else float(drop)
        self.warmup_epochs = int(warmup_epochs)
        self.feature_masking = bool(feature_masking)
        self.full_view = bool(full_view)
        self.subset_views = int(subset_views)
        self.distill_weight = float(distill_weight)
        self.distill = distill
        self.temperature = float(temperature)
        self.sep_weight = float(sep_weight)
        self.sep_level = int(sep_level)

    @property
    def settings(self) -> dict[str, Any]:
        """The settings (the run's definition and the log)."""
        return {
            "sampler": self.sampler,
            "drop": self.drop,
            "warmup_epochs": self.warmup_epochs,
            "feature_masking": self.feature_masking,
            "full_view": self.full_view,
            "subset_views": self.subset_views,
            "distill_weight": self.distill_weight,
            "distill": self.distill,
            "temperature": self.temperature,
            "sep_weight": self.sep_weight,
            "sep_level": self.sep_level,
        }

    def __repr__(self) -> str:
        return f"RobustTraining({', '.join(f'{k}={v!r}' for k, v in self.settings.items())})"

    def iteration(
        self,
        sep_heads: Mapping[str, nn.Module] | None = None,
        method: Any = None,
        branches: BranchSpec | None = None,
    ) -> RobustIteration:
        """The training step of this recipe, for ``SupervisedTrainer(iteration_update=...)``."""
        return RobustIteration(self, sep_heads, method, branches)


def pick_recipe(recipes: Mapping[str, RobustTraining | None], name: str) -> RobustTraining | None:
    """``recipes[name]``: a bundle's ``recipes`` block and its ``recipe`` key.

    Raises:
        ValueError: ``name`` is not in ``recipes`` or its entry is not a :class:`RobustTraining`.
    """
    return pick_entry(recipes, name, "recipe", RobustTraining)


def trainable_parameters(*modules: nn.Module | None) -> list[nn.Parameter]:
    """The parameters of ``modules`` (``None`` skipped), each once: the network and its
    per-sequence heads for one optimizer."""
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        if module is not None:
            for p in module.parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())


class RobustIteration:
    """One training step of a :class:`RobustTraining` recipe, as a ``SupervisedTrainer``'s
    ``iteration_update`` (``engine``, ``batchdata``) -> ``engine.state.output``.

    It fires ``FORWARD_COMPLETED`` after the last forward, ``LOSS_COMPLETED`` once the total loss
    is formed, ``BACKWARD_COMPLETED`` and ``MODEL_COMPLETED`` as MONAI's step does, and leaves the
    full view's prediction (or the subset view's, without one) in ``output["pred"]``. The terms of
    the loss go to ``engine.state`` as ``robust_<term>``.

    Raises:
        ValueError: on the first step, feature masking with a network that does not mask
            (``mask_missing``), per-sequence heads that do not match the network's branches,
            or gradient accumulation.
    """

    def __init__(
        self,
        recipe: RobustTraining,
        sep_heads: Mapping[str, nn.Module] | None = None,
        method: Any = None,
        branches: BranchSpec | None = None,
    ) -> None:
        if not isinstance(recipe, RobustTraining):
            raise ValueError(f"recipe must be a RobustTraining, got {type(recipe).__name__}.")
        if recipe.sep_weight > 0 and not sep_heads:
            raise ValueError(
                "sep_weight > 0 needs the per-sequence heads: "
                "make_heads(task, network, level=recipe.sep_level, detach=False)."
            )
        detaching = sorted(m for m, head in (sep_heads or {}).items() if getattr(head, "detach", False))
        if recipe.sep_weight > 0 and detaching:
            raise ValueError(
                f"the per-sequence heads of {detaching} detach their input features, so their loss would "
                "not reach the encoders: build them with make_heads(..., detach=False)."
            )
        self.recipe = recipe
        self.sep_heads = None if recipe.sep_weight == 0 else dict(sep_heads.items())
        self.method = method
        self.branches = branches
        self.tap: FeatureTap | None = None
        self.modalities: tuple[str, ...] = ()
        self._checked = False
        self.last: dict[str, float] = {}
        #: the method combines each encoder's fused and unimodal gradients (MMPareto)
        self.combines = bool(getattr(method, "combines_gradients", False))
        if self.combines and recipe.sep_weight == 0:
            raise ValueError(
                f"{type(method).__name__} combines each encoder's fused and unimodal gradients: it needs "
                "a recipe with per-sequence heads (sep_weight > 0)."
            )
        self.encoder_params: dict[str, list[nn.Parameter]] = {}
        self.inner: nn.Module | None = None
        self.zero_fill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _zero_fill
        self.shared_encoders = False
        self._epoch_sums: dict[str, float] = {}
        self._epoch_counts: dict[str, int] = {}
        #: per epoch, the mean of each loss term
        self.history: list[dict[str, float]] = []

    def _check(self, engine: Any) -> None:
        network = engine.network
        inner = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
        if inner is not network and self.sep_heads is not None:  # MMPareto's combining needs them too
            raise ValueError(
                "robust training with per-sequence heads does not support DistributedDataParallel: the heads "
                "are not wrapped, so their gradients would differ between processes."
            )
        if int(getattr(engine, "accumulation_steps", 1) or 1) > 1:
            raise ValueError(
                "robust training does not support gradient accumulation (accumulation_steps > 1)."
            )
        if self.recipe.feature_masking and not getattr(inner, "mask_missing", False):
            raise ValueError(
                f"feature_masking=True needs a network that zeroes a missing sequence's features; "
                f"{type(inner).__name__} does not (MultiEncoderSegNet and MultiViewNet with "
                "mask_missing=True do). For a network of your own set feature_masking=False: missing "
                "sequences are then zero-filled at the input only."
            )
        if self.sep_heads is not None:
            # hooks of its own, beside a balancing handler's: these keep the graph (the heads'
            # loss trains the encoders), the handler's detach (its heads only observe)
            self.tap = FeatureTap(network, self.branches, detach=False)
            if set(self.sep_heads) != set(self.tap.branches):
                self.tap.remove()
                raise ValueError(
                    f"the per-sequence heads cover {sorted(self.sep_heads)}, "
                    f"the branches {sorted(self.tap.branches)}."
                )
        if self.combines:
            self.encoder_params = branch_parameters(network, self.branches)
        # The views share one encoder pass when the network can (feature masking makes a view's
        # encoders' outputs those of the full input); not through DDP, whose hooks need forward().
        from monai.inferers import SimpleInferer

        self.inner = inner
        self.shared_encoders = (
            self.recipe.feature_masking
            and callable(getattr(inner, "forward_views", None))
            and inner is network
            and isinstance(engine.inferer, SimpleInferer)
        )
        # input order: the network's modalities (or views), else its branches' order
        names = getattr(inner, "modalities", None) or getattr(inner, "view_names", None)
        names = names or getattr(self.method, "modalities", None)
        names = names or (tuple(self.tap.branches) if self.tap is not None else ())
        self.modalities = tuple(names)
        #: how a subset view is made: the network's own ``keep_views``, else channels zero-filled
        self.zero_fill = getattr(inner, "keep_views", None) or _zero_fill
        self._checked = True
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log_epoch)

    def state_dict(self) -> dict[str, Any]:
        """The per-epoch history, for a resume."""
        return {"history": [dict(row) for row in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [dict(row) for row in state.get("history", [])]

    def __call__(self, engine: Any, batchdata: Any) -> dict[str, Any]:
        from monai.engines.utils import IterationEvents
        from monai.utils.enums import CommonKeys as Keys

        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if not self._checked:
            self._check(engine)
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        recipe = self.recipe
        epoch = engine.state.epoch - 1
        subset = epoch >= recipe.warmup_epochs and recipe.sampler != "none"
        if self.zero_fill is _zero_fill and inputs.shape[1] != len(self.modalities):
            raise ValueError(
                f"robust training needs the input's sequences by name, one per channel; found "
                f"{list(self.modalities)} for an input of {inputs.shape[1]} channels."
            )
        zero_fill = self.zero_fill
        terms: dict[str, torch.Tensor] = {}
        self.last = {}  # this step's loss terms

        def forward(x: torch.Tensor) -> torch.Tensor:
            return engine.inferer(x, engine.network, *args, **kwargs)

        def compute() -> None:
            keep = None
            keeps: list[torch.Tensor] = []
            if subset:
                drop = self._drop_probabilities()
                kind = "size" if recipe.sampler == "size" else "bernoulli"
                for _ in range(recipe.subset_views if recipe.full_view else 1):
                    keeps.append(sample_subsets(inputs.shape[0], drop, kind).to(inputs.device))
                keep = keeps[0]
            if subset and not recipe.full_view:  # one view: the subset, zero-filled
                pred = forward(zero_fill(inputs, keep))
                terms["subset"] = engine.loss_function(pred, targets).mean()
            else:
                if self.shared_encoders and keeps:  # the encoders once, the decoder per view
                    pred, *sub_preds = self.inner.forward_views(inputs, keeps)
                else:  # the full view last, so that the heads observe its features
                    sub_preds = [forward(zero_fill(inputs, k)) for k in keeps]
                    pred = forward(inputs)
                terms["full"] = engine.loss_function(pred, targets).mean()
                if sub_preds:
                    terms["subset"] = sum(engine.loss_function(p, targets).mean() for p in sub_preds) / len(
                        sub_preds
                    )
                if sub_preds and recipe.distill_weight > 0:
                    terms["distill"] = (
                        recipe.distill_weight
                        * sum(consistency(p, pred, recipe.distill, recipe.temperature) for p in sub_preds)
                        / len(sub_preds)
                    )
                keep = None  # the heads' features are the full view's
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            if self.sep_heads is not None:
                terms["sep"] = self._sep_loss(engine, targets, keep)
            engine.state.output[Keys.LOSS] = sum(terms.values())
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        scaled = engine.amp and engine.scaler is not None
        if scaled:
            with torch.autocast("cuda", **engine.amp_kwargs):
                compute()
        else:
            compute()
        scale = engine.scaler.scale if scaled else (lambda loss: loss)
        if self.combines:
            self._combined_backward(terms, scale)
        else:
            scale(engine.state.output[Keys.LOSS]).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if scaled:
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            engine.optimizer.step()
        if self.tap is not None:
            self.tap.clear()
        self.last.update({f"robust_{k}": float(v.detach()) for k, v in terms.items()})
        for name, value in self.last.items():
            setattr(engine.state, name, value)
            self._epoch_sums[name] = self._epoch_sums.get(name, 0.0) + value
            self._epoch_counts[name] = self._epoch_counts.get(name, 0) + 1
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _log_epoch(self, engine: Any) -> None:
        """The epoch's mean loss terms: logged and kept."""
        if not self._epoch_counts:
            return
        means = {k: v / self._epoch_counts[k] for k, v in self._epoch_sums.items()}
        self.history.append({"epoch": float(engine.state.epoch), **means})
        engine.logger.info(
            f"robust training, epoch {engine.state.epoch}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in means.items())
        )
        self._epoch_sums, self._epoch_counts = {}, {}

    def _combined_backward(
        self, terms: dict[str, torch.Tensor], scale: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        """Two backward passes: the fused terms, then the per-sequence heads' loss; each encoder's
        gradient is then the method's combination of the two (the rest keep their sums)."""
        fused = sum(v for k, v in terms.items() if k != "sep")
        scale(fused).backward(retain_graph=True)
        first = {m: _flat_grads(params) for m, params in self.encoder_params.items()}
        for params in self.encoder_params.values():
            for p in params:
                p.grad = None
        scale(terms["sep"]).backward()
        second = {m: _flat_grads(params) for m, params in self.encoder_params.items()}
        combined = self.method.combine(first, second)
        for m, params in self.encoder_params.items():
            offset = 0
            for p in params:
                n = p.numel()
                p.grad = combined[m][offset : offset + n].view_as(p).to(p.dtype).clone()
                offset += n

    def _drop_probabilities(self) -> torch.Tensor:
        """Each sequence's probability of being dropped this step: the recipe's ``drop`` for all
        (a subclass may set them per sequence)."""
        return torch.full((len(self.modalities),), self.recipe.drop, dtype=torch.float64)

    def _sep_weights(self) -> dict[str, float]:
        """Each sequence head's loss weight this step: the recipe's ``sep_weight`` for all (a
        subclass may set them per sequence)."""
        return dict.fromkeys(self.modalities, self.recipe.sep_weight)

    def _sep_loss(self, engine: Any, targets: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Each present sequence's head on its encoder's (attached) features, the task loss, weighted."""
        features = self.tap.features
        weights = self._sep_weights()
        total = targets.new_zeros(())
        for index, m in enumerate(self.modalities):
            rows = None if keep is None else keep[:, index]
            if rows is not None and not bool(rows.any()):
                continue
            feats = features[m] if rows is None or bool(rows.all()) else _select_rows(features[m], rows)
            target = targets if rows is None or bool(rows.all()) else targets[rows]
            prediction = self.sep_heads[m](feats)
            if prediction.shape[2:] != target.shape[2:]:
                target = pool_target(target, prediction.shape[2:])
            total = total + weights[m] * engine.loss_function(prediction.float(), target).mean()
        return total

    def remove(self) -> None:
        """Take the per-sequence heads' hooks off the network."""
        if self.tap is not None:
            self.tap.remove()


def _zero_fill(inputs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``inputs`` with the channels ``keep`` (``B x M``) does not keep set to zero."""
    return inputs * keep.view(*keep.shape, *([1] * (inputs.dim() - 2))).to(inputs.dtype)


def _flat_grads(params: list[nn.Parameter]) -> torch.Tensor:
    """The parameters' gradients as one flat vector (zeros where a parameter has none)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def _select_rows(features: Any, rows: torch.Tensor) -> Any:
    if isinstance(features, torch.Tensor):
        return features[rows]
    return type(features)(_select_rows(f, rows) for f in features)
