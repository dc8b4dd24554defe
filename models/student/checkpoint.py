"""The student's checkpoint folder (the shared layout is in models.training.checkpoint):

    config.json          kind "student", the student/prefix/loss settings, the teacher it was distilled from
                         (folder, config sha256, weights sha256), the teacher outputs it read (cache file,
                         key, what computing them cost), the data config and the split record (sha256 checked
                         whenever the split is rebuilt)
    weights.safetensors  the student's weights and `teacher_items`: the teacher's item vectors (its
                         `item_matrix()`), which the student scores with and the export serves unchanged
    users.json/items.json/item_titles.json

The student is self-contained: exporting or evaluating it never loads the teacher's LM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import from_dict, to_dict
from models.cllm4rec.scoring import History
from models.data.config import DataConfig
from models.data.dataset import IdMap, InteractionData
from models.data.loaders import load_data
from models.data.splits import Split, make_split
from models.student.config import StudentConfig
from models.student.model import Student
from models.training import checkpoint as ckpt

KIND = "student"
TITLES = "item_titles.json"


def save_checkpoint(out: Path, model: Student, data: InteractionData, extra: dict[str, Any]) -> None:
    config = {"model": to_dict(model.cfg), **extra}
    files = {"users.json": data.users.ids, "items.json": data.items.ids, TITLES: list(data.item_title)}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt.write_checkpoint(Path(out), KIND, config, state, files)


@dataclass
class LoadedStudent:
    model: Student
    config: dict[str, Any]
    users: IdMap
    items: IdMap
    item_titles: list[str]
    folder: Path

    def training_data(self) -> tuple[InteractionData, Split, History]:
        """The teacher's data and split, rebuilt and checked against the recorded sha256, with time order."""
        data = load_data(from_dict(DataConfig, self.config["data"]))
        if data.users.ids != self.users.ids or data.items.ids != self.items.ids:
            raise ValueError("the data set's user/item ids differ from the checkpoint's id maps: not the training data")
        split = make_split(data, self.config["split"]["protocol"], self.config["split"]["seed"])
        ckpt.check_split(self.config["split"], split, self.folder)
        return data, split, History.build(data)


def load_checkpoint(folder: Path) -> LoadedStudent:
    folder = Path(folder)
    config = ckpt.read_config(folder, KIND)
    weights = ckpt.read_weights(folder, config)
    if "teacher_items" not in weights:
        raise ValueError(f"{folder}: weights have no teacher_items (the teacher's item vectors)")
    model = Student(from_dict(StudentConfig, config["model"]), weights["teacher_items"])
    model.load_state_dict(weights, strict=True)
    model.eval()
    users, items = IdMap.load(folder / "users.json"), IdMap.load(folder / "items.json")
    if len(items) != model.num_items:
        raise ValueError(f"{folder}: {len(items)} item ids for {model.num_items} teacher item vectors")
    return LoadedStudent(model, config, users, items, ckpt.read_json(folder, TITLES), folder)
