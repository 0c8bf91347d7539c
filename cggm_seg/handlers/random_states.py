"""Every random state a training epoch draws from, saved with a checkpoint and restored on resume."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from cggm_seg.balancing.distributed import world_size

__all__ = ["RandomStates"]


def _numpy_state(state: tuple) -> dict[str, Any]:
    """NumPy's ``RandomState.get_state()`` as tensors and numbers (loadable with weights_only=True)."""
    name, key, pos, has_gauss, cached = state
    return {
        "name": str(name),
        "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    key = np.asarray(state["key"].numpy(), dtype=np.uint32)
    return (state["name"], key, state["pos"], state["has_gauss"], state["cached_gaussian"])


def _python_state(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_tuple(state: Mapping[str, Any]) -> tuple:
    return (state["version"], tuple(int(v) for v in state["internal"].tolist()), state["gauss"])


def _random_transforms(transform: Any) -> list[np.random.RandomState]:
    """The NumPy generators of every MONAI ``Randomizable`` in ``transform`` (a ``Compose`` or a
    transform), nested ones included (a dictionary transform's array transform), in a fixed order."""
    from monai.transforms import Randomizable, Transform

    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for child in obj:
                visit(child)
            return
        if not isinstance(obj, (Transform, Randomizable)):
            return
        generator = getattr(obj, "R", None)
        if isinstance(obj, Randomizable) and isinstance(generator, np.random.RandomState):
            if id(generator) not in seen:
                seen.add(id(generator))
                found.append(generator)
        for child in vars(obj).values():
            visit(child)

    visit(transform)
    return found


class RandomStates:
    """Every random state a training epoch draws from, as one checkpointable object.

    Torch's CPU generator (the data loader's shuffling), the CUDA generators where there is a GPU,
    NumPy's and Python's global generators, and the generator of every random transform of
    ``transform`` (the training data's augmentation). Saved after an epoch and loaded when a run
    resumes, they make the next epoch draw what an uninterrupted run would.

    Under ``torch.distributed`` with more than one rank the states are saved (by rank 0) but not
    loaded: giving every rank rank 0's states would make the ranks augment alike.

    Args:
        transform: the training dataset's transform (``None``: the global generators only).
    """

    def __init__(self, transform: Any = None) -> None:
        self.transform = transform

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(np.random.get_state()),
            "python": _python_state(random.getstate()),
            "transforms": [_numpy_state(r.get_state()) for r in _random_transforms(self.transform)],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: the checkpoint's random transforms are not this run's (another pipeline).
        """
        if world_size() > 1:
            logging.getLogger("cggm_seg.handlers").info(
                "random states are not restored under torch.distributed (each rank keeps its own)"
            )
            return
        generators = _random_transforms(self.transform)
        if len(generators) != len(state["transforms"]):
            raise ValueError(
                f"the checkpoint holds the states of {len(state['transforms'])} random transforms, this "
                f"run's training transform has {len(generators)}: it was saved by another data pipeline."
            )
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(_numpy_tuple(state["numpy"]))
        random.setstate(_python_tuple(state["python"]))
        for generator, saved in zip(generators, state["transforms"]):
            generator.set_state(_numpy_tuple(saved))
