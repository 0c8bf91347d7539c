"""The missing-sequence audit: how much a model leans on each MRI sequence.

A model is evaluated on every non-empty subset of its sequences (2^M - 1 subsets; 15 for
BraTS), a missing sequence being a channel of zeros after intensity normalisation
(:func:`cggm_seg.apps.brats.sequences.zero_sequences`; the RFNet / mmFormer protocol). Two summaries:

- the **15-subset mean**: the mean Dice over all non-empty subsets, the headline figure of the
  missing-modality literature;
- the **Shapley value** of each sequence for the mean Dice: its average marginal contribution
  over all orders in which the sequences could be added (Shapley 1953), computed exactly over the
  2^M coalitions with ``v(empty) = 0``. The values add up to ``v(all sequences) - v(empty)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

__all__ = ["sequence_subsets", "subset_name", "shapley_values"]


def sequence_subsets(sequences: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``sequences``, smallest first, each in the order given.

    ``["t1", "t2"]`` -> ``[("t1",), ("t2",), ("t1", "t2")]``.

    Raises:
        ValueError: no sequences, or a repeated name.
    """
    names = tuple(sequences)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"need distinct sequence names, got {list(names)}.")
    return [c for size in range(1, len(names) + 1) for c in itertools.combinations(names, size)]


def subset_name(subset: Sequence[str]) -> str:
    """A subset as one token for tables and file columns: ``("t1", "flair")`` -> ``"t1+flair"``."""
    return "+".join(subset)


def shapley_values(
    value: Mapping[frozenset[str], float] | Callable[[frozenset[str]], float],
    players: Sequence[str],
    empty: float = 0.0,
) -> dict[str, float]:
    """Exact Shapley values of a coalition game.

    ``phi_i = sum_{S subset of N minus i} |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S))``
    (Shapley 1953), summed over all 2^(n-1) coalitions without player i.

    Args:
        value: ``v(S)`` for every non-empty coalition S (a mapping keyed by frozensets, or a function).
        players: the players (sequences), n >= 1.
        empty: ``v`` of the empty coalition. Defaults to 0 (a model given no sequence segments nothing).

    Returns:
        player -> phi; the values sum to ``v(all) - empty`` (efficiency).

    Raises:
        KeyError: a mapping without the value of some coalition.
        ValueError: no players, or a repeated name.
    """
    names = tuple(players)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"need distinct players, got {list(names)}.")
    n = len(names)

    def v(coalition: frozenset[str]) -> float:
        if not coalition:
            return float(empty)
        return float(value(coalition) if callable(value) else value[coalition])

    phi = {}
    for player in names:
        others = [p for p in names if p != player]
        total = 0.0
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for coalition in itertools.combinations(others, size):
                s = frozenset(coalition)
                total += weight * (v(s | {player}) - v(s))
        phi[player] = total
    return phi
