"""Fixtures every test folder may use."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from ignite.engine import Engine, Events


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker, and every bundle run it starts, uses one thread, so that
    ``-n 2`` on two cores does not oversubscribe them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture
def make_engine() -> Callable[[list[int]], Engine]:
    """A one-parameter Ignite engine (``engine.weight``, ``engine.optimizer``: SGD) that appends each
    completed epoch to the list it is given: the smallest trainer a checkpoint handler can save."""

    def make(epochs_done: list[int]) -> Engine:
        weight = torch.nn.Parameter(torch.zeros(2))
        optimizer = torch.optim.SGD([weight], lr=0.1)

        def step(engine, batch):
            optimizer.zero_grad()
            (weight * batch).sum().backward()
            optimizer.step()

        engine = Engine(step)
        engine.weight = weight
        engine.optimizer = optimizer
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs_done.append(e.state.epoch))
        return engine

    return make
