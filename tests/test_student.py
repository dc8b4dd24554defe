"""The distilled student of CLLM4Rec (issue 28) on a tiny random teacher: training and its losses, the
teacher-output cache, export through the real exporter and answers over gRPC, and the eval report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import parse
from common.errors import ConfigError
from models.cllm4rec import cli as teacher_cli
from models.cllm4rec.checkpoint import load_checkpoint as load_teacher
from models.student import cli
from models.student import teacher as teacher_io
from models.student.bundle import load_bundle
from models.student.checkpoint import load_checkpoint
from models.student.config import DistillConfig, PrefixConfig
from models.student.loss import Targets, embedding_loss, importance, losses
from models.student.model import left_padded
from models.tiny import cllm4rec_argv, write_causal_lm, write_ml100k
from models.training.state import read_log
from repository.manifest import Manifest
from server.adapters.student_sasrec import StudentSequence

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("student")
    lm, data = write_causal_lm(root / "lm"), write_ml100k(root / "ml", users=16, items=24, per_user=9)
    teacher = root / "teacher"
    config = parse(teacher_cli.TrainCli, [*cllm4rec_argv(lm, data, teacher), "--recipe.content-warmup-epochs", "0"],
                   presets=teacher_cli.SCHEDULES)
    teacher_cli.train(config)
    return {"root": root, "teacher": teacher, "cache": root / "cache"}


def student_argv(assets: dict, out: Path, *flags: str) -> list[str]:
    return ["--teacher", str(assets["teacher"]), "--out", str(out), "--cache-dir", str(assets["cache"]),
            "--model.dim", "16", "--model.max-seq-len", "6", "--prefixes.per-user", "3", "--prefixes.top-k", "5",
            "--train.epochs", "4", "--train.patience", "4", "--train.batch-size", "8", "--train.lr", "3e-3",
            "--train.no-progress", "--precision", "fp32", *flags]


def train(assets: dict, out: Path, *flags: str) -> Path:
    cli.train(parse(cli.TrainCli, student_argv(assets, out, *flags)))
    return out


@pytest.fixture(scope="module")
def student(assets: dict) -> Path:
    return train(assets, assets["root"] / "student")


def test_training_lowers_the_loss_and_caches_the_teachers_answers(assets: dict, student: Path) -> None:
    log = read_log(student)
    losses_by_epoch = [e["loss"] for e in log["epochs"]]
    assert len(losses_by_epoch) == 4 and losses_by_epoch[-1] < losses_by_epoch[0]
    config = json.loads((student / "config.json").read_text())
    info = config["teacher_outputs"]
    assert info["computed"] is True and Path(info["file"]).is_file() and info["cost"]["prompts"] > 0
    assert config["kind"] == "student" and config["distill"]["rank_weight"] > 0
    loaded = load_checkpoint(student)
    with torch.no_grad():
        expected = load_teacher(assets["teacher"]).model.item_matrix().float()
    torch.testing.assert_close(loaded.model.teacher_items, expected, atol=0, rtol=0)  # the teacher's item space


def test_a_second_run_reuses_the_cached_answers(assets: dict, student: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("teacher outputs recomputed")

    monkeypatch.setattr(teacher_io, "compute", never)
    out = train(assets, tmp_path / "seed1", "--train.seed", "1", "--train.epochs", "1")
    info = json.loads((out / "config.json").read_text())["teacher_outputs"]
    first = json.loads((student / "config.json").read_text())["teacher_outputs"]
    assert info["computed"] is False and info["file"] == first["file"] and info["cost"] == first["cost"]


def test_no_teacher_trains_the_same_student_on_the_ground_truth_alone(assets: dict, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teacher_io, "load_or_compute", lambda *a, **k: pytest.fail("teacher asked"))
    out = train(assets, tmp_path / "alone", "--no-teacher", "--train.epochs", "1")
    config = json.loads((out / "config.json").read_text())
    assert config["distill"]["rank_weight"] == 0 and config["distill"]["embed_weight"] == 0
    assert config["teacher_outputs"] is None and config["no_teacher"] is True


def test_prefixes_end_at_the_whole_history_and_the_teacher_skips_seen_items(assets: dict) -> None:
    ordered = [np.arange(10), np.arange(1), np.zeros(0, dtype=np.int64)]
    p = teacher_io.make_prefixes(ordered, PrefixConfig(per_user=4, min_length=2))
    assert p.users.tolist() == [0, 0, 0, 0, 1] and p.lengths.tolist() == [2, 5, 7, 10, 1]
    assert p.future(0).tolist() == list(range(2, 10)) and len(p.future(3)) == 0
    teacher = load_teacher(assets["teacher"])
    _, split = teacher.training_data()
    q = teacher_io.make_prefixes([split.train[u] for u in range(3)], PrefixConfig(per_user=2, top_k=4))
    out = teacher_io.compute(teacher, q, PrefixConfig(per_user=2, top_k=4), torch.device("cpu"), False)
    for i in range(len(q)):
        assert not set(out.top_items[i].tolist()) & set(q.history(i).tolist())
        assert (np.diff(out.top_scores[i]) <= 0).all()
    key = teacher_io.cache_key(assets["teacher"], split.fingerprint(), q, PrefixConfig(per_user=2, top_k=4))
    assert key == teacher_io.cache_key(assets["teacher"], split.fingerprint(), q,
                                       PrefixConfig(per_user=2, top_k=4, batch_size=3))  # same answers, same file
    for other in (PrefixConfig(per_user=2, top_k=5), PrefixConfig(per_user=2, top_k=4, teacher_user="anonymous")):
        assert key != teacher_io.cache_key(assets["teacher"], split.fingerprint(), q, other)
    assert key != teacher_io.cache_key(assets["teacher"], "another split", q, PrefixConfig(per_user=2, top_k=4))


def test_importance_weights_and_losses() -> None:
    cfg = DistillConfig(consistency_share=0.0, confidence_share=0.0)
    top = torch.tensor([[3, 1, 2]])
    w = importance(cfg, top, torch.zeros(1, 3), torch.zeros(1, 5))
    assert torch.allclose(w.sum(1), torch.ones(1)) and w[0, 0] > w[0, 1] > w[0, 2]
    sure = importance(DistillConfig(position_share=0.0, consistency_share=0.0), top, torch.tensor([[5.0, 0.0, 0.0]]),
                      torch.zeros(1, 5))
    assert sure[0, 0] > 0.9
    agree = importance(DistillConfig(position_share=0.0, confidence_share=0.0), top, torch.zeros(1, 3),
                       torch.tensor([[5.0, 0.0, 0.0, 9.0, 5.0]]))  # the student's top-3: items 3, 0, 4
    assert agree[0].tolist() == [1.0, 0.0, 0.0]  # of the teacher's 3, 1, 2 only item 3 is shared
    seen = torch.zeros(2, 5, dtype=torch.bool)
    seen[0, 0] = True
    truth = torch.zeros(2, 5)
    truth[0, 4] = 1.0  # row 1 has no later items: it only distils
    t = Targets(seen, truth, torch.tensor([[4, 1], [2, 3]]), torch.zeros(2, 2), torch.ones(2, 4))
    vec, items = torch.randn(2, 4, requires_grad=True), torch.randn(5, 4)
    for kind in ("cosine", "mse", "scores"):
        out = losses(DistillConfig(embed_loss=kind), vec, items, t)
        assert all(torch.isfinite(v) for v in out.values()) and out["truth"] > 0 and out["rank"] > 0
        out["total"].backward()
    off = losses(DistillConfig(rank_weight=0.0, embed_weight=0.0), vec, items, t)
    assert off["rank"] == 0 and off["embed"] == 0 and off["total"] == off["truth"]


def test_embedding_distillation_ignores_dimensions_no_item_reads() -> None:
    """An LM's huge hidden dimensions that the item vectors scale to ~0 change no score, nor the loss."""
    items = torch.randn(6, 3)
    items[:, 2] = 0.0
    teacher = torch.tensor([[1.0, 2.0, 500.0]])
    student = torch.tensor([[1.0, 2.0, 0.0]])
    for kind in ("cosine", "mse", "scores"):
        assert embedding_loss(kind, student, teacher, items, student @ items.T) < 1e-6
    assert embedding_loss("cosine", -student, teacher, items, -student @ items.T) > 1.0


def test_adapter_left_pads_the_most_recent_rows() -> None:
    manifest = Manifest.from_dict({
        "format_version": 1, "name": "s", "version": 1, "kind": "student", "user_tower": "sasrec", "item_tower": "id",
        "dim": 4, "metric": "inner_product", "num_items": 9, "num_users": 0, "capabilities": {"history": True},
        "files": {"items.faiss": {"sha256": "x", "bytes": 1}}, "index": {"type": "flat"}, "encoders": {},
        "student": {"max_seq_len": 3, "teacher": {"kind": "cllm4rec"}}})
    adapter = StudentSequence(Path("."), manifest)
    payloads = [adapter.payload(None, [5, 6, 7, 8], lambda r: r), adapter.payload(2, [4], lambda r: r)]
    assert payloads[0].tolist() == [6, 7, 8] and adapter.length(payloads[1]) == 1
    feeds = adapter.feeds(payloads, ["item_rows", "mask"])
    assert feeds["item_rows"].tolist() == [[6, 7, 8], [0, 0, 4]] and feeds["mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    rows, mask = left_padded([[6, 7, 8, 9], [4]], 3)
    assert rows.tolist() == [[7, 8, 9], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_export_and_server_answer_as_the_torch_student(student: Path, tmp_path: Path) -> None:
    from repo_fixtures import running_server

    from export.config import ExportConfig, GraphConfig
    from export.writer import export_bundle

    bundle = load_bundle(student)
    loaded = load_checkpoint(student)
    np.testing.assert_array_equal(bundle.item_vectors, loaded.model.teacher_items.numpy())
    assert bundle.kind == "student" and bundle.model_config["max_seq_len"] == 6
    repo = tmp_path / "repo"
    version = export_bundle(bundle, repo, "student", ExportConfig(graph=GraphConfig(ort_optimize="basic"), report=False))
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["kind"] == "student" and manifest["student"]["max_seq_len"] == 6
    assert manifest["parity"]["user_encoder"]["topk_identical_up_to_ties"]
    users = [u for u, h in enumerate(bundle.user_histories) if len(h)][:3]
    with running_server(repo) as (_srv, client):
        for u in users:
            history = [bundle.item_ids[int(r)] for r in bundle.user_histories[u]]
            with torch.no_grad():
                vector = loaded.model(*left_padded([bundle.user_histories[u]], 6)).numpy()[0]
            scores = bundle.item_vectors @ vector
            rec = client.recommend("student", history=history, top_k=5, include_history=True)
            got = [bundle.item_ids.index(i) for i, _ in rec.items]
            np.testing.assert_allclose([s for _, s in rec.items], scores[got], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(sorted(scores[got], reverse=True), np.sort(scores)[::-1][:5], rtol=1e-4, atol=1e-4)
            known = client.recommend("student", user_id=bundle.user_ids[u], top_k=5)
            np.testing.assert_allclose(bundle.user_vectors[u], vector, rtol=1e-5, atol=1e-5)
            seen = set(history)
            assert [i for i, _ in known.items] == [bundle.item_ids[r] for r in np.argsort(-scores)
                                                   if bundle.item_ids[r] not in seen][:5]


def test_eval_report_has_the_teacher_the_student_without_it_and_the_overlap(assets: dict, student: Path,
                                                                           tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    alone = train(assets, tmp_path / "alone", "--no-teacher", "--train.epochs", "1")
    seed1 = train(assets, tmp_path / "seed1", "--train.seed", "1")
    argv = ["--checkpoint", str(student), "--label", "student", "--checkpoint", str(seed1), "--label", "student",
            "--checkpoint", str(alone), "--label", "alone",
            "--results-dir", str(tmp_path), "--serving-length", "40", "--overlap-k", "5"]
    assert cli.eval_main(argv) == 0
    report = json.loads((tmp_path / "quality_student_ml100k.json").read_text())
    rows = {v["label"]: v for v in report["variants"]}
    assert {"student", "alone", "teacher (CLLM4Rec)", "ease"} <= set(rows)
    assert report["reference"] == "teacher (CLLM4Rec)" and rows["teacher (CLLM4Rec)"]["vs_reference"] == {}
    diff = rows["student"]["vs_reference"]["recall@20"]
    assert diff["n"] == report["split_counts"]["evaluated_users_test"]
    assert "recall@20" in rows["alone"]["vs_second_reference"]
    overlap = rows["student"]["overlap_with_teacher"]
    assert 0.0 <= overlap["mean"] <= 1.0 and overlap["k"] == 5 and "overlap_with_teacher" not in rows["ease"]
    assert rows["student"]["runs"][0]["user_encoder"]["length"] == 6
    assert "top-5 overlap with the teacher" in (tmp_path / "quality_student_ml100k.md").read_text()
    # a renamed teacher row stays the reference; a reference naming no row is refused, not left blank
    short = ["--checkpoint", str(student), "--label", "student", "--results-dir", str(tmp_path / "r2"),
             "--no-baselines", "--no-serving-cost", "--overlap-k", "5", "--second-reference", ""]
    assert cli.eval_main([*short, "--teacher-label", "the LM"]) == 0
    again = json.loads((tmp_path / "r2" / "quality_student_ml100k.json").read_text())
    assert again["reference"] == "the LM" and "recall@20" in again["variants"][0]["vs_reference"]
    with pytest.raises(ConfigError, match="--reference 'nope' names no row"):
        cli.eval_main([*short, "--reference", "nope"])
    monkeypatch.setenv("LLMREC_WORK_DIR", str(tmp_path / "work"))
    # the two-seed student row is rerun from its first seed's recorded command and lands where the report says
    assert cli.eval_main(["--verify", str(tmp_path / "quality_student_ml100k.json")]) == 0
    assert (tmp_path / "work" / "verify" / "student" / "config.json").is_file()
