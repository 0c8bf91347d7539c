"""The CGGM balance tracker: head scores eps -> changes d -> balancing coefficients B.

CGGM (Guo, Jin, Chen, Zhao; NeurIPS 2024) measures each modality's unimodal head every iteration,
``eps_i^t``, takes its change ``d_i^t = eps_i^t - eps_i^(t-1)`` and turns the changes into one
coefficient per modality (METHOD.md 1.1.3)::

    B_i = rho * sum_{k != i} d_k / sum_k d_k

A modality whose head improves slowly relative to the others gets a large B_i (boosted); a fast,
dominant one a small B_i (held back). The formula lives in :func:`balance_coefficients`; the
bookkeeping (smoothing, guards, warm-up, ranks, checkpoints) in :class:`BalanceTracker`.

Taken raw, the formula misbehaves (METHOD.md 1.2): with ``sum d ~ 0`` the B_i explode, and with
changes of mixed sign some B_i turn negative, which would *reverse* an encoder's gradient.
The default ``guarded`` preset therefore smooths eps, falls back to neutral B near a zero sum and
clamps B to a positive range; the ``paper`` preset keeps the formula bare, for comparison only.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cggm_seg.balancing.distributed import mean_over_ranks

__all__ = ["PRESETS", "GUARDED_DEFAULTS", "balance_coefficients", "BalanceTracker"]

#: ``guarded`` (default): EMA-smoothed eps, neutral fallback, clamp; ``paper``: the bare formula.
PRESETS: tuple[str, ...] = ("guarded", "paper")

#: Defaults of the ``guarded`` preset (see :class:`BalanceTracker` for the reasons).
GUARDED_DEFAULTS: dict[str, float] = {"ema": 0.9, "tau": 1e-4, "b_min": 0.1, "b_max": 2.0}


def balance_coefficients(deltas: torch.Tensor, rho: float = 1.0) -> torch.Tensor:
    """CGGM's balancing term, exactly as the paper states it, without any guard.

    ``B_i = rho * (sum_{k != i} d_k) / (sum_k d_k)`` (Guo et al. 2024, "gradient magnitude", the
    balancing term B_{m_i}^t). Note ``sum_i B_i = rho * (M - 1)``; equal changes give
    ``B_i = rho * (M - 1) / M``; a zero sum gives inf/nan; changes of mixed sign can give B_i < 0.

    Args:
        deltas: shape ``M`` (M >= 2), the per-modality score changes ``d_k``.
        rho: the overall scale rho.

    Returns:
        shape ``M``, same dtype as ``deltas``.

    Raises:
        ValueError: ``deltas`` is not a vector of at least two entries.
    """
    if deltas.ndim != 1 or deltas.numel() < 2:
        raise ValueError(f"deltas must be a vector of M >= 2 score changes, got shape {tuple(deltas.shape)}.")
    others = torch.stack([torch.cat([deltas[:i], deltas[i + 1 :]]).sum() for i in range(deltas.numel())])
    return rho * others / deltas.sum()  # CGGM: B_{m_i}^t = rho * sum_{k != i} d_k^t / sum_k d_k^t


class BalanceTracker:
    """Tracks per-modality head scores and turns them into CGGM balancing coefficients B.

    Call :meth:`update` once per training iteration with the heads' scores; it returns B (shape
    ``M``, float64, CPU) and keeps ``eps``, ``delta`` and ``B`` as attributes.

    What one update does, in order (``guarded`` preset):

    1. Under torch.distributed (initialised, world size > 1) the raw scores are averaged over ranks
       first, so every rank computes identical B (every rank must call :meth:`update` alike).
    2. ``eps = ema * eps_prev + (1 - ema) * raw`` (the first update takes ``raw`` as it is).
       Non-finite scores are skipped: eps keeps its last value and ``delta`` is 0.
    3. ``delta = eps - eps_prev`` (0 on the first update: no change has been measured yet).
    4. ``B = balance_coefficients(delta, rho)``, replaced by the neutral ``rho * ones`` on the first
       update, during warm-up (the first ``warmup`` updates), when ``|sum delta| < tau``, or when
       anything is non-finite.
    5. Bounds: clamp to ``[b_min, b_max]``; with ``renormalize`` then divide by the mean and clamp
       again. The first clamp makes every entry positive (``b_min > 0``), so the mean is a safe
       divisor and mixed-sign changes can never give a negative B (which would reverse an
       encoder's gradient); the second clamp guarantees the bounds after renormalisation, so the
       mean is exactly 1 unless that second clamp bites. Every B returned is finite and in
       ``[b_min, b_max]``, neutral ones included.

    The ``paper`` preset uses the raw per-batch eps (no EMA), no tau, no clamp and no
    renormalisation: the formula exactly, including its inf/nan when ``sum delta == 0`` and its
    negative values for mixed signs. It is there to compare against, not to train with.

    Args:
        modalities: the modality names, in the order of B (M >= 2).
        rho: overall scale rho of B (the paper used 1.0 on BraTS, 1.3 elsewhere). Defaults to 1.0.
            Note that with changes of one sign B lies in ``[0, rho]`` and sums to ``rho * (M - 1)``,
            while the neutral fallback is ``rho`` for every modality.
        ema: weight of the past in the eps moving average, in [0, 1); 0 = the paper's raw per-batch
            eps. Guarded default 0.9 (about ten iterations): the paper's delta between two
            different mini-batches is dominated by sampling noise.
        tau: neutral fallback threshold on ``|sum delta|``. Guarded default 1e-4: scores live in
            [0, 1] and, with ``ema = 0.9``, deltas are a tenth of the raw batch-to-batch change;
            below 1e-4 in total the ratio is a ratio of noise.
        b_min: lower bound of B, > 0. Guarded default 0.1: no encoder is slowed more than tenfold,
            none is frozen or reversed.
        b_max: upper bound of B. Guarded default 2.0: with changes of one sign B stays in
            ``[0, rho]``, so the bound only bites on ill-conditioned (mixed-sign, near-zero sum)
            updates, where it stops a noise ratio from multiplying a step by a large factor.
        renormalize: rescale B to mean 1 (removes rho's effect). Requires ``b_min <= 1 <= b_max``.
            Defaults to False (the paper has no renormalisation).
        warmup: number of first updates that return the neutral B while eps already accumulates
            (the heads need a few iterations before their progress means anything). Defaults to 0.
        preset: ``"guarded"`` (default) or ``"paper"``. ``ema``, ``tau``, ``b_min``, ``b_max`` left
            as ``None`` take the preset's value; ``paper`` accepts none of them.
        history_size: how many updates :attr:`history` keeps (oldest dropped); 0 keeps none.
            Defaults to 10000 (a few MB; enough to plot a demo run).

    Attributes:
        eps: shape ``M``, the (smoothed) scores after the last update; NaN before the first.
        raw: shape ``M``, the last scores as given (after averaging over ranks).
        delta: shape ``M``, the last score changes.
        B: shape ``M``, the last coefficients (neutral before the first update).
        step: number of updates so far.
        history: list of per-update dicts ``{"iteration", "eps_<m>", "d_<m>", "B_<m>"}`` (the format of
            :func:`cggm_seg.evaluation.plots.plot_balance_history`).

    Raises:
        ValueError: an argument out of range, or a ``paper`` preset given guard settings.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        rho: float = 1.0,
        ema: float | None = None,
        tau: float | None = None,
        b_min: float | None = None,
        b_max: float | None = None,
        renormalize: bool = False,
        warmup: int = 0,
        preset: str = "guarded",
        history_size: int = 10_000,
    ) -> None:
        modalities = tuple(modalities)
        if len(modalities) < 2 or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be at least two distinct names, got {modalities}.")
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}.")
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a positive finite number, got {rho}.")
        if warmup < 0 or history_size < 0:
            raise ValueError(f"warmup and history_size must be >= 0, got {warmup} and {history_size}.")
        if preset == "paper":
            given = [
                k
                for k, v in {"ema": ema, "tau": tau, "b_min": b_min, "b_max": b_max}.items()
                if v is not None
            ]
            given += ["renormalize"] if renormalize else []
            if given:
                raise ValueError(
                    "preset='paper' is the bare formula (raw eps, no guard, no clamp, no renormalisation); "
                    f"remove {given} or use preset='guarded'."
                )
        else:
            ema = GUARDED_DEFAULTS["ema"] if ema is None else ema
            tau = GUARDED_DEFAULTS["tau"] if tau is None else tau
            b_min = GUARDED_DEFAULTS["b_min"] if b_min is None else b_min
            b_max = GUARDED_DEFAULTS["b_max"] if b_max is None else b_max
            if not 0.0 <= ema < 1.0:
                raise ValueError(f"ema must be in [0, 1), got {ema}.")
            if not tau >= 0.0:
                raise ValueError(f"tau must be >= 0, got {tau}.")
            if not (0.0 < b_min <= b_max < math.inf):
                raise ValueError(
                    f"the guarded preset needs 0 < b_min <= b_max < inf, got [{b_min}, {b_max}]."
                )
            if renormalize and not b_min <= 1.0 <= b_max:
                raise ValueError(f"renormalize to mean 1 needs b_min <= 1 <= b_max, got [{b_min}, {b_max}].")
        self.modalities = modalities
        self.rho = float(rho)
        self.ema = 0.0 if ema is None else float(ema)
        self.tau = tau
        self.b_min = b_min
        self.b_max = b_max
        self.renormalize = renormalize
        self.warmup = int(warmup)
        self.preset = preset
        self.history_size = int(history_size)
        self._reset()

    @property
    def guarded(self) -> bool:
        """True for the guarded preset."""
        return self.preset == "guarded"

    def _reset(self) -> None:
        m = len(self.modalities)
        self.step = 0
        self.eps = torch.full((m,), math.nan, dtype=torch.float64)
        self.raw = torch.full((m,), math.nan, dtype=torch.float64)
        self.delta = torch.zeros(m, dtype=torch.float64)
        self.B = self.neutral()
        self.history: deque[dict[str, float]] = deque(maxlen=self.history_size)

    def neutral(self) -> torch.Tensor:
        """The neutral coefficients ``rho * ones`` (bounded like any B in the guarded preset)."""
        return self._bound(torch.full((len(self.modalities),), self.rho, dtype=torch.float64))

    def _bound(self, b: torch.Tensor) -> torch.Tensor:
        if not self.guarded:
            return b
        b = b.clamp(self.b_min, self.b_max)
        if self.renormalize:
            b = (b / b.mean()).clamp(self.b_min, self.b_max)
        return b

    def _as_vector(self, scores: Mapping[str, Any] | Sequence[Any] | torch.Tensor) -> torch.Tensor:
        if isinstance(scores, Mapping):
            if set(scores) != set(self.modalities):
                raise ValueError(
                    f"scores must have one entry per modality {self.modalities}, got keys {sorted(scores)}."
                )
            values = [scores[m] for m in self.modalities]
        else:
            values = list(scores.reshape(-1)) if isinstance(scores, torch.Tensor) else list(scores)
            if len(values) != len(self.modalities):
                raise ValueError(
                    f"expected {len(self.modalities)} scores ({self.modalities}), got {len(values)}."
                )
        return torch.tensor([float(v) for v in values], dtype=torch.float64)

    def update(
        self, scores: Mapping[str, Any] | Sequence[Any] | torch.Tensor, average_ranks: bool = True
    ) -> torch.Tensor:
        """Record this iteration's head scores and return the new B.

        Args:
            scores: one score per modality: a mapping modality -> number / 0-dim tensor, or a
                sequence / tensor of M values in :attr:`modalities` order.
            average_ranks: average the scores over torch.distributed ranks first (step 1); False
                when the caller already did (:class:`~cggm_seg.balancing.observer.HeadObserver`).

        Returns:
            B, shape ``M``, float64 on the CPU (also kept as :attr:`B`).

        Raises:
            ValueError: the scores do not match the modalities.
        """
        raw = self._as_vector(scores)
        raw = mean_over_ranks(raw) if average_ranks else raw
        self.step += 1
        self.raw = raw
        has_previous = bool(torch.isfinite(self.eps).all())
        if self.ema > 0.0 and has_previous:
            eps = self.ema * self.eps + (1.0 - self.ema) * raw  # METHOD.md 1.3: smoothed eps
        else:
            eps = raw
        if self.guarded and not torch.isfinite(eps).all():
            # A broken batch must not poison the running average: keep eps, measure no change.
            self.delta = torch.zeros_like(raw)
            b = self.neutral()
        else:
            # CGGM: Delta eps^t = eps^t - eps^(t-1)
            self.delta = eps - self.eps if has_previous else torch.zeros_like(raw)
            self.eps = eps
            if not has_previous or self.step <= self.warmup:
                b = self.neutral()
            else:
                b = balance_coefficients(self.delta, self.rho)
                if self.guarded and not (
                    torch.isfinite(self.delta).all()
                    and torch.isfinite(b).all()
                    and abs(self.delta.sum()) >= self.tau
                ):
                    b = self.neutral()
        self.B = self._bound(b)
        if self.history_size:
            self.history.append({"iteration": float(self.step), **self.stats()})
        return self.B

    def stats(self) -> dict[str, float]:
        """The last update as plain floats: ``eps_<m>``, ``d_<m>``, ``B_<m>`` for every modality."""
        out: dict[str, float] = {}
        for name, values in (("eps", self.eps), ("d", self.delta), ("B", self.B)):
            out.update({f"{name}_{m}": float(v) for m, v in zip(self.modalities, values)})
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, numbers and strings (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "modalities": list(self.modalities),
            "step": self.step,
            "eps": self.eps.clone(),
            "raw": self.raw.clone(),
            "delta": self.delta.clone(),
            "B": self.B.clone(),
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`, so that training resumes with identical B.

        Raises:
            ValueError: the state was saved for other modalities.
        """
        if list(state["modalities"]) != list(self.modalities):
            raise ValueError(
                f"this tracker balances {list(self.modalities)}, "
                f"the state is for {list(state['modalities'])}."
            )
        self.step = int(state["step"])
        for key in ("eps", "raw", "delta", "B"):
            setattr(self, key, torch.as_tensor(state[key], dtype=torch.float64).clone())
        self.history = deque((dict(h) for h in state["history"]), maxlen=self.history_size)
