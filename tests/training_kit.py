"""Helpers shared by the training tests."""

from __future__ import annotations

from typing import Any

from models.training.loop import Stage


def die_before(task: Any, stop_before: tuple[str, int]) -> None:
    """Makes the run die as epoch `stop_before` = (stage, epoch) starts, after the previous epoch's state
    was saved: the way a killed job would."""
    real = task.epoch_batches

    def dying(stage: Stage, epoch: int, rng: Any) -> Any:
        if (stage.name, epoch) == stop_before:
            raise KeyboardInterrupt("killed")
        return real(stage, epoch, rng)

    task.epoch_batches = dying
