"""Resume state in `<out>/train/`, nothing pickled.

    train/state.safetensors  tensors: model.* (trained tensors now), best.* (at the best epoch so
                             far), optim.<param>.<key> (optimizer moments), rng.* (torch
                             generators); its metadata holds the JSON rest (the loop's counters,
                             the numpy generator, optimizer / scheduler / grad-scaler scalars), so
                             one atomic rename replaces the whole state
    train/log.json           the training log (written every epoch; see loop.py)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.training.checkpoint import atomic_write_json, read_json

FOLDER = "train"
TENSORS = "state.safetensors"
LOG = "log.json"


def split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state_dict -> (its tensors by flat name, the JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def join_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in rest["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out |= {f"rng.cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save(out: Path, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (TENSORS + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"state": json.dumps(scalars)})
    os.replace(tmp, folder / TENSORS)


def load(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    path = Path(out) / FOLDER / TENSORS
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        scalars = json.loads(f.metadata()["state"])
    return tensors, scalars


def write_log(out: Path, log: dict[str, Any]) -> None:
    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / LOG, log)


def read_log(checkpoint: Path) -> dict[str, Any]:
    """The training log beside a checkpoint (empty when the folder has none)."""
    path = Path(checkpoint) / FOLDER / LOG
    return read_json(path.parent, LOG) if path.is_file() else {}
