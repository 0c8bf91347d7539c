"""Per-modality task scores eps: how well one unimodal head does on the current batch.

CGGM (``docs/methods.md``) measures each head's performance eps_i every iteration and balances the
modalities on its change; OGM-GE compares the heads' true-class probabilities.
The sigmoid scores take region channels (BraTS TC, WT, ET) and same-shaped binary masks; the
``softmax_*`` scores take the other common form, class logits with a background channel and a
label of class indices (``B x 1 x *spatial``) or one-hot (``B x C x *spatial``).

Every score here has the same signature::

    score(logits, target) -> 0-dim float tensor (detached, on ``logits.device``)

so a user can plug in their own. Scores are computed without gradients. Pick one by name with
:func:`get_score` (``get_score("hard_dice", smooth=1e-3)`` binds keyword arguments).

===================================  ==============  ============================================
name                                 task            value
===================================  ==============  ============================================
``soft_dice``                        segmentation    mean Dice of ``sigmoid(logits)``
``hard_dice``                        segmentation    mean Dice of ``sigmoid(logits) > 0.5``
``region_true_class_probability``    segmentation    mean of ``p`` where target 1, ``1 - p`` where 0
``softmax_dice``                     segmentation    mean foreground Dice of ``softmax(logits)``
``softmax_hard_dice``                segmentation    the same on the argmax
``softmax_true_class_probability``   segmentation    mean softmax probability of each voxel's class
``accuracy``                         classification  fraction of correct argmax predictions
``true_class_probability``           classification  mean softmax probability of the true class
``inverse_mae``                      regression      ``1 / (1 + MAE)``
``sign_accuracy``                    regression      fraction with ``(pred >= 0) == (target >= 0)``
===================================  ==============  ============================================
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "ScoreFn",
    "SCORES",
    "dice_score",
    "region_true_class_probability",
    "softmax_dice_score",
    "softmax_true_class_probability",
    "accuracy",
    "true_class_probability",
    "inverse_mae",
    "sign_accuracy",
    "get_score",
]

#: A score: ``(logits, target) -> 0-dim float tensor``.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_same_shape(logits: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if logits.shape != target.shape:
        hint = ""
        if target.ndim == logits.ndim and target.shape[1] == 1 and logits.shape[1] > 1:
            hint = (
                " The target has one channel of class indices: for a softmax network give the heads "
                "score='softmax_dice' (or 'softmax_true_class_probability'), which take class indices."
            )
        raise ValueError(
            f"{what} expects logits and target of the same shape (B, C, *spatial), "
            f"got {tuple(logits.shape)} and {tuple(target.shape)}.{hint}"
        )
    if logits.ndim < 2:
        raise ValueError(f"{what} expects (B, C, *spatial) tensors, got shape {tuple(logits.shape)}.")


def _select_channels(x: torch.Tensor, channels: Sequence[int] | None) -> torch.Tensor:
    return x if channels is None else x[:, list(channels)]


@torch.no_grad()
def dice_score(
    logits: torch.Tensor,
    target: torch.Tensor,
    hard: bool = False,
    smooth: float = 1e-5,
    channels: Sequence[int] | None = None,
) -> torch.Tensor:
    """Mean Dice over region channels and batch, from sigmoid logits.

    Per sample b and channel c, with ``p = sigmoid(logits)`` (or ``p > 0.5`` when ``hard``) and
    ``t = target``::

        dice[b, c] = (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)

    then the mean over b and c. The smooth term (MONAI DiceLoss's 1e-5) makes an empty
    prediction of an empty region count as 1, and keeps every value defined.

    Args:
        logits: ``B x C x *spatial`` region logits (TC, WT, ET for BraTS).
        target: ``B x C x *spatial`` binary region masks (bool or float), same shape.
        hard: threshold the probabilities at 0.5 instead of using them as they are.
        smooth: added to numerator and denominator. Defaults to 1e-5.
        channels: indices of the region channels to average over; ``None`` = all.

    Returns:
        0-dim float tensor in [0, 1].

    Raises:
        ValueError: the shapes differ or have fewer than 2 dimensions.
    """
    _check_same_shape(logits, target, "dice_score")
    prob = torch.sigmoid(_select_channels(logits, channels).float())
    if hard:
        prob = (prob > 0.5).float()
    truth = _select_channels(target, channels).float()
    dims = tuple(range(2, prob.ndim))
    intersection = (prob * truth).sum(dims)
    denominator = prob.sum(dims) + truth.sum(dims)
    return ((2.0 * intersection + smooth) / (denominator + smooth)).mean()


@torch.no_grad()
def region_true_class_probability(
    logits: torch.Tensor, target: torch.Tensor, channels: Sequence[int] | None = None
) -> torch.Tensor:
    """OGM-GE's score for segmentation: the mean probability given to the true class of each voxel.

    With ``p = sigmoid(logits)``: ``p`` where the target is 1, ``1 - p`` where it is 0, averaged over
    voxels, region channels and batch (the voxel-wise analogue of OGM-GE's ``softmax(...)[y]``).

    Args:
        logits: ``B x C x *spatial`` region logits.
        target: ``B x C x *spatial`` binary region masks, same shape.
        channels: indices of the region channels to average over; ``None`` = all.

    Returns:
        0-dim float tensor in [0, 1].
    """
    _check_same_shape(logits, target, "region_true_class_probability")
    prob = torch.sigmoid(_select_channels(logits, channels).float())
    truth = _select_channels(target, channels).float() > 0.5
    return torch.where(truth, prob, 1.0 - prob).mean()


def _one_hot_target(logits: torch.Tensor, target: torch.Tensor, what: str) -> torch.Tensor:
    """``B x C x *spatial`` one-hot of a ``B x 1 x *spatial`` (or ``B x *spatial``) index label, or
    a one-hot label as it is."""
    if logits.ndim < 3:
        raise ValueError(f"{what} expects B x C x *spatial class logits, got shape {tuple(logits.shape)}.")
    if target.shape == logits.shape:
        return target.float()
    index = target[:, 0] if target.ndim == logits.ndim and target.shape[1] == 1 else target
    if index.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"{what} expects a label of class indices B x 1 x *spatial or one-hot B x C x *spatial for "
            f"logits {tuple(logits.shape)}, got {tuple(target.shape)}."
        )
    index = index.long()
    if index.min() < 0 or index.max() >= logits.shape[1]:
        raise ValueError(
            f"{what}: label values must be class indices in [0, {logits.shape[1] - 1}], "
            f"got [{int(index.min())}, {int(index.max())}]."
        )
    return F.one_hot(index, logits.shape[1]).movedim(-1, 1).float()


@torch.no_grad()
def softmax_dice_score(
    logits: torch.Tensor,
    target: torch.Tensor,
    hard: bool = False,
    include_background: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Mean Dice over classes and batch of a softmax segmentation (a background channel first).

    ``p = softmax(logits, dim=1)`` (or the one-hot of its argmax when ``hard``), ``t`` = the one-hot
    label; per sample and class ``(2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)``, averaged
    over the classes (without channel 0 unless ``include_background``) and the batch.

    Args:
        logits: ``B x C x *spatial`` class logits, C >= 2.
        target: ``B x 1 x *spatial`` class indices or ``B x C x *spatial`` one-hot.
        hard: use the argmax instead of the probabilities.
        include_background: also average over channel 0. Defaults to False.
        smooth: added to numerator and denominator. Defaults to 1e-5.

    Returns:
        0-dim float tensor in [0, 1].

    Raises:
        ValueError: a label of another shape, or class indices out of range.
    """
    truth = _one_hot_target(logits, target, "softmax_dice_score")
    prob = F.softmax(logits.float(), dim=1)
    if hard:
        prob = F.one_hot(prob.argmax(1), logits.shape[1]).movedim(-1, 1).float()
    first = 0 if include_background else 1
    prob, truth = prob[:, first:], truth[:, first:]
    dims = tuple(range(2, prob.ndim))
    intersection = (prob * truth).sum(dims)
    return ((2.0 * intersection + smooth) / (prob.sum(dims) + truth.sum(dims) + smooth)).mean()


@torch.no_grad()
def softmax_true_class_probability(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """OGM-GE's score for a softmax segmentation: the mean softmax probability of each voxel's class.

    Args:
        logits: ``B x C x *spatial`` class logits.
        target: ``B x 1 x *spatial`` class indices or ``B x C x *spatial`` one-hot.

    Returns:
        0-dim float tensor in [0, 1].
    """
    truth = _one_hot_target(logits, target, "softmax_true_class_probability")
    return (F.softmax(logits.float(), dim=1) * truth).sum(1).mean()


def _class_targets(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Normalise classification inputs: (logits, class indices, binary-with-one-logit flag)."""
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        return logits.reshape(-1).float(), target.reshape(-1).float(), True
    if logits.ndim != 2:
        raise ValueError(f"classification scores expect B x C logits, got shape {tuple(logits.shape)}.")
    if target.shape == logits.shape:  # one-hot or soft labels
        target = target.argmax(dim=1)
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"classification target must be B class indices or B x C one-hot, got {tuple(target.shape)} "
            f"for logits {tuple(logits.shape)}."
        )
    return logits.float(), target.long(), False


@torch.no_grad()
def accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Classification accuracy.

    Args:
        logits: ``B x C`` class logits, or ``B`` / ``B x 1`` binary logits (positive when > 0).
        target: ``B`` class indices (or ``B x C`` one-hot); for binary logits ``B`` labels in {0, 1}.

    Returns:
        0-dim float tensor in [0, 1].
    """
    logits, target, binary = _class_targets(logits, target)
    pred = (logits > 0).float() if binary else logits.argmax(dim=1)
    return (pred == target).float().mean()


@torch.no_grad()
def true_class_probability(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean predicted probability of the true class (OGM-GE's ``softmax(...)[y]``, batch mean).

    Args:
        logits: ``B x C`` class logits (softmax), or ``B`` / ``B x 1`` binary logits (sigmoid).
        target: ``B`` class indices (or ``B x C`` one-hot); for binary logits ``B`` labels in {0, 1}.

    Returns:
        0-dim float tensor in [0, 1].
    """
    logits, target, binary = _class_targets(logits, target)
    if binary:
        prob = torch.sigmoid(logits)
        return torch.where(target > 0.5, prob, 1.0 - prob).mean()
    return F.softmax(logits, dim=1).gather(1, target[:, None]).mean()


def _flat_regression(
    pred: torch.Tensor, target: torch.Tensor, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.numel() != target.numel():
        raise ValueError(
            f"{what} expects one prediction per target, "
            f"got shapes {tuple(pred.shape)} and {tuple(target.shape)}."
        )
    return pred.reshape(-1).float(), target.reshape(-1).float()


@torch.no_grad()
def inverse_mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bounded regression score ``1 / (1 + MAE)``: 1 for a perfect fit, towards 0 as errors grow.

    Args:
        pred: ``B`` or ``B x 1`` predictions.
        target: the same number of targets.

    Returns:
        0-dim float tensor in (0, 1].
    """
    pred, target = _flat_regression(pred, target, "inverse_mae")
    return 1.0 / (1.0 + (pred - target).abs().mean())


@torch.no_grad()
def sign_accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of predictions on the right side of zero, ``(pred >= 0) == (target >= 0)``.

    The non-negative / negative binary accuracy used for CMU-MOSI sentiment scores.

    Args:
        pred: ``B`` or ``B x 1`` predictions.
        target: the same number of targets.

    Returns:
        0-dim float tensor in [0, 1].
    """
    pred, target = _flat_regression(pred, target, "sign_accuracy")
    return ((pred >= 0) == (target >= 0)).float().mean()


#: The scores :func:`get_score` knows, by name.
SCORES: dict[str, ScoreFn] = {
    "soft_dice": dice_score,
    "hard_dice": functools.partial(dice_score, hard=True),
    "region_true_class_probability": region_true_class_probability,
    "softmax_dice": softmax_dice_score,
    "softmax_hard_dice": functools.partial(softmax_dice_score, hard=True),
    "softmax_true_class_probability": softmax_true_class_probability,
    "accuracy": accuracy,
    "true_class_probability": true_class_probability,
    "inverse_mae": inverse_mae,
    "sign_accuracy": sign_accuracy,
}


def get_score(name: str | ScoreFn, **kwargs: object) -> ScoreFn:
    """The score called ``name`` (see :data:`SCORES`), with ``kwargs`` bound.

    Args:
        name: a key of :data:`SCORES`, or a callable ``(logits, target) -> tensor`` returned as is
            (with ``kwargs`` bound when given).
        kwargs: keyword arguments of the score, e.g. ``smooth`` or ``channels`` for the Dice.

    Raises:
        ValueError: unknown name.
        TypeError: a keyword the score does not take.
    """
    if callable(name):
        fn: ScoreFn = name
    elif name in SCORES:
        fn = SCORES[name]
    else:
        raise ValueError(f"unknown score {name!r}; available: {sorted(SCORES)}.")
    if not kwargs:
        return fn
    try:
        inspect.signature(fn).bind_partial(None, None, **kwargs)
    except TypeError as err:
        raise TypeError(f"score {name!r} does not take {sorted(kwargs)}: {err}") from None
    return functools.partial(fn, **kwargs)
