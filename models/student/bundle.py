"""Student checkpoint -> ServingBundle (models/bundle.py, docs/model-repository.md: kind "student").

The item vectors are the teacher's exported item vectors, bit for bit (the `teacher_items` the student was
trained to score against), so the version searches the same index the teacher's version does. The user
encoder is the student itself: item rows + mask in, a vector in the teacher's score space out; known users
get that vector precomputed from their train history (time order, most recent max_seq_len items), which is
also what a history request carrying that history computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import EncoderExport, QualityProbe, ServingBundle
from models.cllm4rec.bundle import PROBE_BATCH, probe_part
from models.student.checkpoint import LoadedStudent, load_checkpoint
from models.student.model import left_padded
from models.student.train import StudentScorer


def manifest_section(loaded: LoadedStudent) -> dict[str, Any]:
    teacher = loaded.config.get("teacher") or {}
    return {"max_seq_len": loaded.model.cfg.max_seq_len, "pad_row": 0,
            "teacher": {k: teacher.get(k) for k in ("kind", "checkpoint", "weights_sha256")}}


def _sample_inputs(histories: list[np.ndarray], max_len: int) -> list[tuple[torch.Tensor, ...]]:
    """Batch 1 at the shortest and the longest history, a batch of mixed lengths, and a 2-row batch."""
    by_len = sorted(range(len(histories)), key=lambda i: len(histories[i]))
    picks = [by_len[k] for k in np.linspace(0, len(by_len) - 1, 4).astype(int)]
    return [left_padded([histories[by_len[0]]], max_len), left_padded([histories[by_len[-1]]], max_len),
            left_padded([histories[i] for i in picks], max_len), left_padded([histories[i] for i in picks[1:3]], max_len)]


def load_bundle(checkpoint_dir: Path, known_users: bool = True) -> ServingBundle:
    loaded = load_checkpoint(Path(checkpoint_dir))
    model = loaded.model
    data, split, hist = loaded.training_data()
    users = np.arange(data.num_users)
    histories = [hist.ordered(int(u), split.train[u]) for u in users]
    if known_users:
        user_vectors = StudentScorer(model, hist).user_vectors(users, split.train)
    else:
        user_vectors = np.zeros((0, model.vector_dim), np.float32)
    max_len = model.cfg.max_seq_len
    nonempty = [h for h in histories if len(h)]
    export = EncoderExport(
        module=model.eval(),
        input_names=["item_rows", "mask"],
        output_name="user_vector",
        dynamic_axes={"item_rows": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}, "user_vector": {0: "batch"}},
        sample_inputs=_sample_inputs(nonempty, max_len),
    )
    probe_users, seen, targets = probe_part(split)
    probe_hist = [hist.ordered(int(u), seen[u]) for u in probe_users]
    probe = QualityProbe(
        encoder_inputs=[left_padded(probe_hist[s: s + PROBE_BATCH], max_len) for s in range(0, len(probe_hist), PROBE_BATCH)],
        exclude=[seen[u] for u in probe_users],
        targets=[targets[u] for u in probe_users],
        metric="recall@20",
    )
    return ServingBundle(
        kind="student",
        user_tower="sasrec",
        item_tower="id",
        dim=model.vector_dim,
        item_ids=list(loaded.items.ids),
        item_vectors=model.teacher_items.detach().cpu().numpy().astype(np.float32),
        item_titles=[t or "" for t in loaded.item_titles],
        user_ids=list(loaded.users.ids) if known_users else [],
        user_vectors=user_vectors.astype(np.float32),
        user_histories=histories,
        encoders={"user_encoder": export},
        model_config=manifest_section(loaded),
        probe=probe,
    )
