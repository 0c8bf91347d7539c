"""The checkpointing handlers under their former module name.

They live in :mod:`cggm_seg.handlers.checkpoint` (per-epoch checkpoints and resuming),
:mod:`cggm_seg.handlers.best_checkpoint`, :mod:`cggm_seg.handlers.random_states` and
:mod:`cggm_seg.handlers.run_lock`; this module re-exports them so that code importing
``cggm_seg.handlers.resume`` keeps working.
"""

from cggm_seg.handlers.best_checkpoint import BestCheckpoint
from cggm_seg.handlers.checkpoint import ResumableCheckpoint, atomic_save, latest_checkpoint
from cggm_seg.handlers.random_states import RandomStates
from cggm_seg.handlers.run_lock import RunLock

__all__ = [
    "BestCheckpoint",
    "RandomStates",
    "ResumableCheckpoint",
    "RunLock",
    "atomic_save",
    "latest_checkpoint",
]
