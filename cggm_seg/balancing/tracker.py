"""The CGGM balance tracker: head scores eps -> changes d -> balancing coefficients B.

CGGM (Guo, Jin, Chen, Zhao; NeurIPS 2024) measures each modality's unimodal head every iteration,
``eps_i^t``, takes its change ``d_i^t = eps_i^t - eps_i^(t-1)`` and turns the changes into one
coefficient per modality (``docs/methods.md``)::

    B_i = rho * sum_{k != i} d_k / sum_k d_k

A modality whose head improves slowly relative to the others gets a large B_i (boosted); a fast,
dominant one a small B_i (held back). The formula lives in :func:`balance_coefficients`; the
bookkeeping (smoothing, guards, warm-up, ranks, checkpoints) in :class:`BalanceTracker`.

Taken raw, the formula misbehaves : with ``sum d ~ 0`` the B_i explode, and with
changes of mixed sign some B_i turn negative, which would *reverse* an encoder's gradient. And a
per-iteration change is noise: at batch size 1 a head's Dice moves by about 0.1 from one batch to
the next while its trend is about 1e-3 per iteration, so even an EMA-smoothed change is a ratio of
noise and B jumps between its bounds.

Three presets (:data:`PRESETS`):

- ``trend`` (default): d_i is each head's *rate of improvement*, the least-squares slope of its
  raw scores over the last ``window`` iterations; B is neutral until the window is full and while
  the summed slope is not significantly positive (below ``z`` standard errors), then clamped and
  renormalised to mean 1, so "no signal" means every encoder at joint training's step.
- ``guarded``: the EMA-smoothed per-iteration change with a neutral fallback near a zero sum and a
  clamp (the first implementation; kept to compare against).
- ``paper``: the formula bare, on the raw per-batch change, for comparison only.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cggm_seg.balancing.distributed import mean_over_ranks

__all__ = [
    "PRESETS",
    "GUARDED_DEFAULTS",
    "TREND_DEFAULTS",
    "score_slopes",
    "balance_coefficients",
    "BalanceTracker",
]

#: ``trend`` (default): windowed slope, significance guard, clamp, mean 1; ``guarded``: EMA-smoothed
#: per-iteration change, neutral fallback, clamp; ``paper``: the bare formula.
PRESETS: tuple[str, ...] = ("trend", "guarded", "paper")

#: Defaults of the ``guarded`` preset (see :class:`BalanceTracker` for the reasons).
GUARDED_DEFAULTS: dict[str, float] = {"ema": 0.9, "tau": 1e-4, "b_min": 0.1, "b_max": 2.0}

#: Defaults of the ``trend`` preset (see :class:`BalanceTracker` for the reasons).
TREND_DEFAULTS: dict[str, float] = {"window": 100, "z": 2.0, "b_min": 0.1, "b_max": 2.0}


def score_slopes(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares slope of each column of ``scores`` against the row index, and its standard error.

    For a window of ``W`` scores ``y_t`` (t = 0..W-1): ``slope = sum_t (t - tbar)(y_t - ybar) / Sxx``
    with ``Sxx = sum_t (t - tbar)^2``, and ``se = sqrt(s^2 / Sxx)`` where ``s^2`` is the residual
    variance ``sum_t r_t^2 / (W - 2)`` (ordinary least squares).

    Args:
        scores: shape ``W x M`` (W >= 3), one row per iteration, oldest first.

    Returns:
        ``(slope, se)``, each shape ``M``, per iteration.

    Raises:
        ValueError: fewer than three rows.
    """
    if scores.ndim != 2 or scores.shape[0] < 3:
        raise ValueError(f"need a W x M window with W >= 3, got shape {tuple(scores.shape)}.")
    w = scores.shape[0]
    t = torch.arange(w, dtype=scores.dtype) - (w - 1) / 2.0
    sxx = (t * t).sum()
    centred = scores - scores.mean(0)
    slope = (t @ centred) / sxx
    residual = centred - t[:, None] * slope
    se = ((residual * residual).sum(0) / (w - 2) / sxx).sqrt()
    return slope, se


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

    What one update does, in order:

    1. Under torch.distributed (initialised, world size > 1) the raw scores are averaged over ranks
       first, so every rank computes identical B (every rank must call :meth:`update` alike).
    2. The rate of improvement ``delta`` of each head:

       - ``trend``: the raw score joins a window of the last ``window`` scores (non-finite scores
         are skipped); ``delta`` = the least-squares slope over that window (:func:`score_slopes`),
         ``eps`` = the window's mean score. A slope over W iterations has a standard error of
         ``sigma * sqrt(12 / W^3)``: for batch noise sigma = 0.1 and W = 100 that is 3.5e-4,
         below the 1e-3 per iteration of a head that is still learning, where a per-iteration
         change has a standard error of ``sigma * sqrt(2)`` = 0.14.
       - ``guarded`` / ``paper``: ``eps = ema * eps_prev + (1 - ema) * raw`` (the first update takes
         ``raw``; ``ema = 0`` in the paper preset) and ``delta = eps - eps_prev`` (0 on the first
         update). Guarded: non-finite scores are skipped (eps keeps its value, delta is 0).

    3. ``B = balance_coefficients(delta, rho)``, replaced by the neutral value (:meth:`neutral`) during
       warm-up (the first ``warmup`` updates; ``trend``: also until the window is full), and

       - ``trend``: while the summed slope is below ``z`` times its standard error (no significant
         progress to share out: the ratio would be a ratio of noise);
       - ``guarded``: on the first update, when ``|sum delta| < tau``, or when anything is non-finite.

    4. Bounds (``trend`` and ``guarded``): clamp to ``[b_min, b_max]``; with ``renormalize`` then
       divide by the mean and clamp again. The first clamp makes every entry positive
       (``b_min > 0``), so the mean is a safe divisor and mixed-sign changes can never give a
       negative B (which would reverse an encoder's gradient); the second clamp guarantees the
       bounds after renormalisation, so the mean is exactly 1 unless that clamp bites. Every B
       returned is finite and in ``[b_min, b_max]``, neutral ones included.

    The neutral value is ``ones`` in the ``trend`` preset (the mean of a renormalised B: no signal
    means every encoder at joint training's step) and ``rho * ones`` (bounded) in the others.

    The ``paper`` preset uses the raw per-batch eps (no EMA), no tau, no clamp and no
    renormalisation: the formula exactly, including its inf/nan when ``sum delta == 0`` and its
    negative values for mixed signs. It is there to compare against, not to train with.

    Args:
        modalities: the modality names, in the order of B (M >= 2).
        rho: overall scale rho of B (the paper used 1.0 on BraTS, 1.3 elsewhere). Defaults to 1.0.
            With changes of one sign B lies in ``[0, rho]`` and sums to ``rho * (M - 1)``; with
            ``renormalize`` (the ``trend`` default) rho cancels out.
        ema: ``guarded`` only: weight of the past in the eps moving average, in [0, 1). Default 0.9.
        tau: ``guarded`` only: neutral fallback threshold on ``|sum delta|``. Default 1e-4.
        b_min: lower bound of B, > 0. Default 0.1: no encoder is slowed more than tenfold, none is
            frozen or reversed.
        b_max: upper bound of B. Default 2.0.
        renormalize: rescale B to mean 1. Requires ``b_min <= 1 <= b_max``. Defaults to True for
            ``trend``, False for ``guarded`` (the paper has no renormalisation).
        warmup: number of first updates that return the neutral B while scores already accumulate.
            Defaults to 0 (``trend`` is neutral anyway until its window is full).
        preset: ``"trend"`` (default), ``"guarded"`` or ``"paper"``. Settings left as ``None`` take
            the preset's value; a setting the preset does not use is an error.
        history_size: how many updates :attr:`history` keeps (oldest dropped); 0 keeps none.
            Defaults to 10000 (a few MB; enough to plot a demo run).
        window: ``trend`` only: iterations in the slope window (>= 3). Default 100.
        z: ``trend`` only: significance of the summed slope, in standard errors, below which B is
            neutral (>= 0). Default 2.0.

    Attributes:
        eps: shape ``M``, the (smoothed) scores after the last update; NaN before the first.
        raw: shape ``M``, the last scores as given (after averaging over ranks).
        delta: shape ``M``, the last rates of improvement (per iteration).
        B: shape ``M``, the last coefficients (neutral before the first update).
        step: number of updates so far.
        history: list of per-update dicts ``{"iteration", "eps_<m>", "d_<m>", "B_<m>"}`` (the format of
            :func:`cggm_seg.evaluation.plots.plot_balance_history`).

    Raises:
        ValueError: an argument out of range, or a setting the preset does not use.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        rho: float = 1.0,
        ema: float | None = None,
        tau: float | None = None,
        b_min: float | None = None,
        b_max: float | None = None,
        renormalize: bool | None = None,
        warmup: int | None = None,
        preset: str = "trend",
        history_size: int = 10_000,
        window: int | None = None,
        z: float | None = None,
    ) -> None:
        modalities = tuple(modalities)
        if len(modalities) < 2 or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be at least two distinct names, got {modalities}.")
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}.")
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a positive finite number, got {rho}.")
        if (warmup is not None and warmup < 0) or history_size < 0:
            raise ValueError(f"warmup and history_size must be >= 0, got {warmup} and {history_size}.")
        given = {"ema": ema, "tau": tau, "b_min": b_min, "b_max": b_max, "window": window, "z": z}
        given = {k: v for k, v in given.items() if v is not None}
        unused = {"paper": {"ema", "tau", "b_min", "b_max", "window", "z"}, "guarded": {"window", "z"}}
        unused["trend"] = {"ema", "tau"}
        wrong = sorted(set(given) & unused[preset])
        if preset == "paper" and renormalize:
            wrong.append("renormalize")
        if wrong:
            raise ValueError(
                f"preset={preset!r} does not use {wrong}: "
                + {
                    "paper": "it is the bare formula (raw eps, no guard, no clamp, no renormalisation).",
                    "guarded": "window and z belong to preset='trend'.",
                    "trend": "ema and tau belong to preset='guarded'.",
                }[preset]
            )
        defaults = {"trend": TREND_DEFAULTS, "guarded": GUARDED_DEFAULTS, "paper": {}}[preset]
        settings = {**defaults, **given}
        self.modalities = modalities
        self.rho = float(rho)
        self.preset = preset
        self.ema = float(settings.get("ema", 0.0))
        self.tau = settings.get("tau")
        self.b_min = settings.get("b_min")
        self.b_max = settings.get("b_max")
        self.window = int(settings["window"]) if "window" in settings else None
        self.z = float(settings["z"]) if "z" in settings else None
        self.renormalize = bool(preset == "trend" if renormalize is None else renormalize)
        self.warmup = int(0 if warmup is None else warmup)
        self.history_size = int(history_size)
        if preset != "paper":
            if not 0.0 <= self.ema < 1.0:
                raise ValueError(f"ema must be in [0, 1), got {self.ema}.")
            if self.tau is not None and not self.tau >= 0.0:
                raise ValueError(f"tau must be >= 0, got {self.tau}.")
            if not (0.0 < self.b_min <= self.b_max < math.inf):
                raise ValueError(
                    f"the {preset} preset needs 0 < b_min <= b_max < inf, got [{self.b_min}, {self.b_max}]."
                )
            if self.renormalize and not self.b_min <= 1.0 <= self.b_max:
                raise ValueError(
                    f"renormalize to mean 1 needs b_min <= 1 <= b_max, got [{self.b_min}, {self.b_max}]."
                )
        if preset == "trend":
            if self.window < 3:
                raise ValueError(f"window must be >= 3 iterations to fit a slope, got {self.window}.")
            if not self.z >= 0.0:
                raise ValueError(f"z must be >= 0, got {self.z}.")
        self._reset()

    @property
    def guarded(self) -> bool:
        """True for the presets with bounds (``trend`` and ``guarded``)."""
        return self.preset != "paper"

    def _reset(self) -> None:
        m = len(self.modalities)
        self.step = 0
        self.eps = torch.full((m,), math.nan, dtype=torch.float64)
        self.raw = torch.full((m,), math.nan, dtype=torch.float64)
        self.delta = torch.zeros(m, dtype=torch.float64)
        self.scores: deque[torch.Tensor] = deque(maxlen=self.window or 1)
        self.B = self.neutral()
        self.history: list[dict[str, float]] = []

    def neutral(self) -> torch.Tensor:
        """The coefficients without a signal: ``ones`` (``trend``), else ``rho * ones`` (bounded)."""
        value = 1.0 if self.preset == "trend" else self.rho
        return self._bound(torch.full((len(self.modalities),), value, dtype=torch.float64))

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
        b = self._trend(raw) if self.preset == "trend" else self._change(raw)
        self.B = self._bound(b)
        if self.history_size:
            self.history.append({"iteration": float(self.step), **self.stats()})
            del self.history[: -self.history_size]
        return self.B

    def _trend(self, raw: torch.Tensor) -> torch.Tensor:
        if torch.isfinite(raw).all():
            self.scores.append(raw)
        if len(self.scores) < 3:
            self.delta = torch.zeros_like(raw)
            if self.scores:
                self.eps = torch.stack(list(self.scores)).mean(0)
            return self.neutral()
        window = torch.stack(list(self.scores))
        self.eps = window.mean(0)
        self.delta, _ = score_slopes(window)  # the rate of improvement d_i, per iteration
        # The heads are scored on the same batches, so their noise is correlated: the standard
        # error of the summed slope is that of the summed scores' slope, not a sum in quadrature.
        total_slope, total_se = score_slopes(window.sum(1, keepdim=True))
        total, total_se = total_slope[0], total_se[0]
        full = len(self.scores) >= self.window
        if self.step <= self.warmup or not full or not total > self.z * total_se:
            return self.neutral()
        return balance_coefficients(self.delta, self.rho)

    def _change(self, raw: torch.Tensor) -> torch.Tensor:
        has_previous = bool(torch.isfinite(self.eps).all())
        if self.ema > 0.0 and has_previous:
            eps = self.ema * self.eps + (1.0 - self.ema) * raw  # smoothed eps
        else:
            eps = raw
        if self.guarded and not torch.isfinite(eps).all():
            # A broken batch must not poison the running average: keep eps, measure no change.
            self.delta = torch.zeros_like(raw)
            return self.neutral()
        # CGGM: Delta eps^t = eps^t - eps^(t-1)
        self.delta = eps - self.eps if has_previous else torch.zeros_like(raw)
        self.eps = eps
        if not has_previous or self.step <= self.warmup:
            return self.neutral()
        b = balance_coefficients(self.delta, self.rho)
        if self.guarded and not (
            torch.isfinite(self.delta).all() and torch.isfinite(b).all() and abs(self.delta.sum()) >= self.tau
        ):
            return self.neutral()
        return b

    def stats(self) -> dict[str, float]:
        """The last update as plain floats: ``eps_<m>``, ``d_<m>``, ``B_<m>`` for every modality."""
        out: dict[str, float] = {}
        for name, values in (("eps", self.eps), ("d", self.delta), ("B", self.B)):
            out.update({f"{name}_{m}": float(v) for m, v in zip(self.modalities, values)})
        return out

    @property
    def settings(self) -> dict[str, Any]:
        """The settings that shape B (saved with the state, checked when it is loaded)."""
        return {
            "preset": self.preset,
            "rho": self.rho,
            "ema": self.ema,
            "tau": self.tau,
            "b_min": self.b_min,
            "b_max": self.b_max,
            "renormalize": self.renormalize,
            "warmup": self.warmup,
            "window": self.window,
            "z": self.z,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, numbers and strings (loadable with ``torch.load(weights_only=True)``),
        with the :attr:`settings` they were made under."""
        return {
            "modalities": list(self.modalities),
            "settings": self.settings,
            "step": self.step,
            "eps": self.eps.clone(),
            "raw": self.raw.clone(),
            "delta": self.delta.clone(),
            "B": self.B.clone(),
            "scores": torch.stack(list(self.scores)) if self.scores else torch.zeros(0, len(self.modalities)),
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`, so that training resumes with identical B.

        Raises:
            ValueError: the state was saved for other modalities, or under other settings (a state
                without settings, from before they were saved, loads into any tracker).
        """
        if list(state["modalities"]) != list(self.modalities):
            raise ValueError(
                f"this tracker balances {list(self.modalities)}, "
                f"the state is for {list(state['modalities'])}."
            )
        saved = state.get("settings")
        if saved is not None:
            mine = self.settings
            saved = {**_ADDED_SETTINGS, **saved}  # a state from before a setting existed had its default
            differ = {k: (saved.get(k), v) for k, v in mine.items() if not _same(saved.get(k), v)}
            if differ:
                detail = ", ".join(f"{k}: saved {a!r}, this tracker {b!r}" for k, (a, b) in differ.items())
                raise ValueError(
                    f"the tracker state was saved under other settings ({detail}); resume with the settings "
                    "it was trained with, or start the run afresh (--resume False)."
                )
        self.step = int(state["step"])
        for key in ("eps", "raw", "delta", "B"):
            setattr(self, key, torch.as_tensor(state[key], dtype=torch.float64).clone())
        saved = torch.as_tensor(state.get("scores", torch.zeros(0)), dtype=torch.float64)
        self.scores = deque(
            (row.clone() for row in saved.reshape(-1, len(self.modalities))), maxlen=self.window or 1
        )
        self.history = [dict(h) for h in state["history"]][-self.history_size :] if self.history_size else []


#: settings added after the first checkpoints were saved, with the value those checkpoints had
_ADDED_SETTINGS: dict[str, Any] = {}


def _same(a: Any, b: Any) -> bool:
    """Settings equal, floats to rounding (a state saved and loaded through JSON or a checkpoint)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b
