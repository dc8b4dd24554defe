"""Helpers shared by the training tests."""

from __future__ import annotations

from pathlib import Path
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


def train_held_out_towers(assets: tuple[Path, Path], out_root: Path, towers: tuple[str, ...],
                          holdout: float) -> list[str]:
    """One tiny TCF checkpoint per item tower (in out_root/<tower>), trained with a share of the items held
    out; returns the `--checkpoint` flags `llmrec eval tcf` takes for them."""
    from common.config import parse
    from models.tcf import cli
    from models.tiny import tcf_argv

    flags = []
    for tower in towers:
        cfg = parse(cli.TrainCli, [*tcf_argv(*assets, out_root / tower), "--model.item-tower", tower,
                                   "--train.epochs", "1", "--recipe.holdout-items", str(holdout)],
                    presets=cli.SCHEDULES)
        cli.train(cfg)
        flags += ["--checkpoint", str(cfg.out)]
    return flags
