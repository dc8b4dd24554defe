"""CLLM4Rec on tiny random backbones: tokens, routing, frozen backbone, losses, prompts,
checkpoints, evaluation and the serving bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from common.config import parse
from models.cllm4rec import cli
from models.cllm4rec.backbone import BackboneConfig, load_backbone
from models.cllm4rec.bundle import FoldedUserEncoder, GraphSpace, load_bundle, user_rows
from models.cllm4rec.checkpoint import load_checkpoint
from models.cllm4rec.model import CLLM4Rec, ModelConfig
from models.cllm4rec.prompts import Template, collab_example, collate, content_example, movie_prefix
from models.cllm4rec.scoring import History, PromptBuilder, RecScorer
from models.cllm4rec.tokens import IdTokenizer
from models.cllm4rec.train import CLLM4RecTask
from models.data.loaders import load_ml100k
from models.metrics import mask_seen, top_k
from models.tiny import cllm4rec_argv, write_causal_lm, write_ml100k
from models.training.checkpoint import WEIGHTS, file_sha256

torch.set_num_threads(1)
DEMO = "Hello, user_1! Have you seen item_2?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cllm4rec")
    return {"backbone": write_causal_lm(root / "lm"), "data": write_ml100k(root / "ml", users=12, items=20, per_user=7),
            "root": root}


def build(tiny: dict, seed: int = 0, item_bias: bool = False, **cfg: object) -> tuple[CLLM4Rec, IdTokenizer, Template]:
    data = load_ml100k(tiny["data"])
    backbone, hf_tok = load_backbone(BackboneConfig(path=tiny["backbone"]))
    tok = IdTokenizer(hf_tok, data.num_users, data.num_items)
    torch.manual_seed(seed)
    return CLLM4Rec(ModelConfig(item_bias=item_bias, **cfg), backbone, tok.vocab), tok, Template.build(tok)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_demo_sentence_round_trip(tmp_path: Path, arch: str) -> None:
    _, hf_tok = load_backbone(BackboneConfig(path=write_causal_lm(tmp_path / arch, arch)))
    tok = IdTokenizer(hf_tok, num_users=5, num_items=7)
    n = len(hf_tok)
    ids = tok.encode(DEMO)
    assert n + 1 in ids and n + 5 + 2 in ids
    words = tok.tokens(ids)
    assert words[words.index("user_1") + 1] == "!" and words[-2:] == ["item_2", "?"]
    assert tok.decode(ids) == DEMO
    assert tok.encode("user_4 has interacted with item_6")[0] == n + 4
    with pytest.raises(ValueError, match="out of range"):
        tok.encode("user_5")


def test_routing_uses_vocab_rows_below_n_and_id_rows_above(tiny: dict) -> None:
    model, tok, _ = build(tiny)
    n = tok.vocab.vocab_size
    ids = torch.tensor([[3, 10, n, n + 5, tok.vocab.anon_token]])
    emb = model.embed(ids, model.collab_embeddings)
    vocab = model.backbone.get_input_embeddings().weight
    assert torch.equal(emb[0, :2], vocab[[3, 10]])
    assert torch.equal(emb[0, 2:], model.collab_embeddings[[0, 5, tok.vocab.anon_token - n]])
    assert torch.equal(model.embed(ids, model.content_embeddings)[0, 3], model.content_embeddings[5])


def _trainable(model: CLLM4Rec) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def test_only_id_tables_learn_and_backbone_is_bit_identical(tiny: dict) -> None:
    model, tok, tmpl = build(tiny)
    assert model.lm_parameters() == [] and set(model.trained_keys()) == {
        "collab_embeddings", "content_embeddings", "feature_scale", "log_scale"}
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.Adam(_trainable(model), lr=1e-2)
    ids, lab = collab_example(tmpl, tok.vocab.user(0), np.array([1, 2, 3]), tok.vocab.item_offset)
    loss = model.collab_loss(**collate([ids], tok.pad_token_id, [lab]))
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.collab_embeddings.grad is not None and model.collab_embeddings.grad.abs().sum() > 0
    opt.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _fit_steps(model: CLLM4Rec, task: str, batch: dict, steps: int = 15) -> tuple[float, float]:
    opt = torch.optim.Adam(_trainable(model), lr=2e-2)
    losses = []
    for _ in range(steps):
        loss = model(task, **batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses[0], losses[-1]


def test_each_loss_decreases(tiny: dict) -> None:
    model, tok, tmpl = build(tiny)
    v = tok.vocab
    rows, labels = zip(*[collab_example(tmpl, v.user(u), np.arange(u, u + 5), v.item_offset) for u in range(4)], strict=True)
    first, last = _fit_steps(model, "collab", collate(list(rows), tok.pad_token_id, list(labels)))
    assert last < first * 0.8
    rows, labels = zip(*[content_example(movie_prefix(tmpl, v.item(j)), tok.words(f" Movie {j} (1995), genres: Drama"), 32)
                         for j in range(4)], strict=True)
    first, last = _fit_steps(model, "content", collate(list(rows), tok.pad_token_id, list(labels)))
    assert last < first - 0.05  # only the item row can move; the words are the frozen LM's
    prompts = PromptBuilder(tmpl, v, 8, tok.pad_token_id)
    batch = collate([prompts.rec(u, np.arange(u, u + 3)) for u in range(4)], tok.pad_token_id)
    y = torch.zeros(4, v.num_items)
    y[torch.arange(4), torch.arange(4) + 10] = 1.0
    batch["targets"] = y
    first, last = _fit_steps(model, "rec", batch)
    assert last < first * 0.8


def test_truncation_drops_oldest_and_keeps_suffix(tiny: dict) -> None:
    _, tok, tmpl = build(tiny)
    v = tok.vocab
    prompts = PromptBuilder(tmpl, v, max_history=3, pad_id=tok.pad_token_id)
    ids = prompts.rec(2, np.array([5, 6, 7, 8, 9]))
    suffix = [*tmpl.comma, v.user(2), *tmpl.will_interact]
    assert ids[-len(suffix):] == suffix
    items = [t - v.item_offset for t in ids if v.item_offset <= t < v.anon_token]
    assert items == [7, 8, 9]
    assert ids[: 1 + len(tmpl.has_interacted)] == [v.user(2), *tmpl.has_interacted]
    assert tok.decode(prompts.rec(None, np.array([1]))).startswith("user_anon has interacted with item_1")


def train_tiny(tiny: dict, out: Path, *flags: str) -> CLLM4RecTask:
    """One content epoch, one (collab, content) round, two rec epochs with the collaborative loss,
    the item bias and title-initialised rows (the defaults)."""
    args = [*cllm4rec_argv(tiny["backbone"], tiny["data"], out), "--recipe.pretrain-rounds", "1",
            "--recipe.rec-collab-weight", "0.5", *flags]
    config = parse(cli.TrainCli, args, presets=cli.SCHEDULES)
    task = cli.build_task(config)
    cli.run(task, config, config.train, out, {})
    return task


@pytest.fixture(scope="module")
def trained(tiny: dict) -> tuple[CLLM4RecTask, Path]:
    out = tiny["root"] / "ckpt"
    return train_tiny(tiny, out), out


def test_checkpoint_round_trip_and_strict_loading(trained: tuple[CLLM4RecTask, Path], tmp_path: Path) -> None:
    task, out = trained
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "cllm4rec" and cfg["format_version"] == 2 and cfg["backbone"]["sha256"]
    assert (out / "train" / "state.safetensors").is_file() and (out / "train" / "log.json").is_file()
    assert set(load_file(str(out / WEIGHTS))) == {
        "collab_embeddings", "content_embeddings", "feature_scale", "log_scale", "item_bias"}
    loaded = load_checkpoint(out)
    users = np.arange(task.data.num_users)
    a = task.scorer(users, task.split.train)
    b = RecScorer(loaded.model, task.prompts, task.hist)(users, task.split.train)
    np.testing.assert_array_equal(a, b)

    for name, tamper in {
        "extra": lambda t: {**t, "lm_head.bias": torch.zeros(3)},
        "missing": lambda t: {k: v for k, v in t.items() if k != "log_scale"},
        "no_bias": lambda t: {k: v for k, v in t.items() if k != "item_bias"},
        "shape": lambda t: {**t, "collab_embeddings": t["collab_embeddings"][:-1]},
    }.items():
        bad = tmp_path / name
        shutil.copytree(out, bad)
        save_file(tamper(load_file(str(out / WEIGHTS))), str(bad / WEIGHTS))
        with pytest.raises(ValueError, match="does not match the sha256"):
            load_checkpoint(bad)
        config = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, "weights_sha256": file_sha256(bad / WEIGHTS)}))
        with pytest.raises(ValueError, match=r"mismatch|shape"):
            load_checkpoint(bad)
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "config.json").write_text(json.dumps({**cfg, "format_version": 1}))
    with pytest.raises(ValueError, match="format_version 1"):
        load_checkpoint(old)


def test_resume_continues_where_it_stopped(tiny: dict, trained: tuple[CLLM4RecTask, Path], tmp_path: Path) -> None:
    _, out = trained
    log = json.loads((out / "train" / "log.json").read_text())
    assert [(e["stage"], e["task"]) for e in log["epochs"]] == [
        ("pretrain", "content"), ("pretrain", "collab"), ("pretrain", "content"), ("rec", "rec"), ("rec", "rec")]
    copy = tmp_path / "ckpt"
    shutil.copytree(out, copy)
    train_tiny(tiny, copy, "--train.epochs", "3")  # picks up train/, runs what is left
    after = json.loads((copy / "train" / "log.json").read_text())
    assert after["epochs"][:5] == log["epochs"] and len(after["epochs"]) in (5, 6)


def test_evaluation_excludes_train_items(trained: tuple[CLLM4RecTask, Path]) -> None:
    task, _ = trained
    split = task.split
    users = split.eval_users("test")
    seen = split.seen("test")
    scores = task.scorer(users, [seen[u] for u in users])
    top = top_k(mask_seen(scores, [seen[u] for u in users]), 5)
    for row, u in zip(top, users, strict=True):
        assert not set(row.tolist()) & set(split.train[u].tolist())
    # the prompt carries the history: changing it changes the scores
    other = task.scorer(users[:1], [seen[users[1]]])
    assert not np.allclose(other, scores[:1])


def test_eval_cli_writes_report(trained: tuple[CLLM4RecTask, Path], tmp_path: Path) -> None:
    """Two labels on one split, EASE beside them, paired differences and the user encoder's cost."""
    _, out = trained
    argv = ["--checkpoint", str(out), "--label", "a", "--checkpoint", str(out), "--label", "b", "--reference", "a",
            "--results-dir", str(tmp_path), "--serving-length", "8"]
    assert cli.eval_main(argv) == 0
    report = json.loads((tmp_path / "quality_cllm4rec_ml100k.json").read_text())
    a, b = report["variants"][:2]
    assert "seed 0" in report["data"] and report["reference"] == "a"
    assert 0.0 <= a["test"]["recall@20"] <= 1.0 and a["runs"][0]["precision"] == "fp32"
    assert b["vs_reference"]["recall@20"]["mean"] == 0.0
    assert b["vs_reference"]["ndcg@100"]["n"] == report["split_counts"]["evaluated_users_test"]
    assert "ease" in [v["label"] for v in report["variants"]] and a["runs"][0]["user_encoder"]["length"] == 8
    assert "recall@20" in (tmp_path / "quality_cllm4rec_ml100k.md").read_text()


def test_bundle_matches_model_and_exports_to_onnx(trained: tuple[CLLM4RecTask, Path], tmp_path: Path) -> None:
    task, out = trained
    bundle = load_bundle(out)
    model = task.model
    enc = bundle.encoders["user_encoder"]
    # the item bias rides as a 33rd dimension: constant 1 on the user side, the bias on the item side
    assert bundle.dim == 33 and bundle.item_vectors.shape == (task.data.num_items, 33)
    np.testing.assert_allclose(bundle.item_vectors[:, -1], model.item_bias.detach().numpy())
    assert np.abs(bundle.item_vectors[:, -1]).max() > 0  # the bias trained
    assert {s[0].shape[0] for s in enc.sample_inputs} >= {1, 4}
    # known users' vectors are computed at export from their prompts (graph token space + user row)
    assert bundle.user_vectors is None and bundle.known_user_inputs is not None
    assert enc.input_names == ["input_ids", "attention_mask", "user_embedding"]
    users = np.arange(task.data.num_users)
    vectors = np.zeros((len(users), bundle.dim), np.float32)
    with torch.no_grad():
        for idx, feeds in bundle.known_user_inputs.batches(users, 8):
            vectors[idx] = enc.module(*(torch.from_numpy(feeds[n]) for n in enc.input_names)).numpy()
    np.testing.assert_array_equal(vectors[:, -1], 1.0)
    expected = task.scorer(users, task.split.train)
    np.testing.assert_allclose(vectors @ bundle.item_vectors.T, expected, atol=1e-4, rtol=1e-4)
    # no user's row is in the graph's table: vocabulary, items and the anonymous row only
    assert bundle.user_rows is not None and bundle.user_rows.shape == (task.data.num_users + 1, 32)
    mc = bundle.model_config
    assert mc["vocab_size"] == enc.module.embed.weight.shape[0] and mc["anonymous_user_token"] == mc["vocab_size"] - 1
    assert bundle.probe is not None and len(bundle.probe.targets) == len(bundle.probe.exclude)
    probed = task.split.eval_users("valid")[: len(bundle.probe.targets)]  # fewer than 200: every valid user
    assert [t.tolist() for t in bundle.probe.targets] == [task.split.valid[u].tolist() for u in probed]
    lean = load_bundle(out, known_users=False)  # what the benchmarks load: no known-user pass
    assert lean.user_vectors.shape == (0, 33) and lean.user_ids == []
    np.testing.assert_array_equal(lean.item_vectors, bundle.item_vectors)

    import onnxruntime as ort

    path = tmp_path / "user_encoder.onnx"
    torch.onnx.export(enc.module, enc.sample_inputs[-1], str(path), input_names=enc.input_names,
                      output_names=[enc.output_name], dynamic_axes=enc.dynamic_axes, opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for case in enc.sample_inputs:
        got = sess.run(None, {n: t.numpy() for n, t in zip(enc.input_names, case, strict=True)})[0]
        np.testing.assert_allclose(got, enc.module(*case).detach().numpy(), atol=1e-4)


def test_title_init_and_calibrated_temperature(tiny: dict) -> None:
    model, tok, _ = build(tiny, item_bias=True)
    data = load_ml100k(tiny["data"])
    texts = [tok.words(" " + t) for t in data.item_title]
    texts[1] = []  # an item without a title keeps its random row
    before = model.collab_embeddings.detach().clone()
    assert model.init_items_from_text(texts) == data.num_items - 1
    vocab = model.backbone.get_input_embeddings().weight
    u = data.num_users
    torch.testing.assert_close(model.collab_embeddings[u], vocab[torch.tensor(texts[0])].mean(0))
    torch.testing.assert_close(model.content_embeddings[u + 2], vocab[torch.tensor(texts[2])].mean(0))
    assert torch.equal(model.collab_embeddings[u + 1], before[u + 1]) and torch.equal(model.collab_embeddings[:u], before[:u])
    with pytest.raises(ValueError, match="item texts"):
        model.init_items_from_text(texts[:-1])
    prompts = PromptBuilder(Template.build(tok), tok.vocab, 8, tok.pad_token_id)
    batch = collate([prompts.rec(k, np.array([1, 2, k + 3])) for k in range(6)], tok.pad_token_id)
    model.calibrate([batch])
    with torch.no_grad():
        scores = model.rec_scores(batch["input_ids"], batch["attention_mask"])
    assert abs(float(scores.std()) - 1.0) < 0.05  # bias is 0 without counts: the spread is the temperature's
    counts = torch.arange(data.num_items)
    model.calibrate([batch], counts)
    prior = torch.log1p(counts.float())
    torch.testing.assert_close(model.item_bias.detach(), prior - prior.mean())


def test_cosine_lr_decays_to_its_floor_and_head_has_its_own_rate(trained: tuple[CLLM4RecTask, Path]) -> None:
    task, out = trained
    log = json.loads((out / "train" / "log.json").read_text())
    rec = [e for e in log["epochs"] if e["stage"] == "rec"]
    pretrain = [e for e in log["epochs"] if e["stage"] == "pretrain"]
    ids, head = task.recipe.pretrain_lr, task.recipe.head_lr
    assert all(e["lr"] == pytest.approx([ids, head]) for e in pretrain)  # stage A: constant rates
    # stage B: cosine over its steps, at the floor after the last one, for both groups
    assert rec[-1]["lr"] == pytest.approx([task.train.lr * task.train.lr_min_frac, head * task.train.lr_min_frac])
    assert rec[0]["lr"][0] < task.train.lr
    groups = task.param_groups(task.stages()[-1])
    assert [g["name"] for g in groups] == ["ids", "head", "lm"] and groups[2]["params"] == []
    assert groups[1]["params"][0] is task.model.log_scale and groups[1]["params"][1] is task.model.item_bias


def test_folded_encoder_routes_like_the_model(tiny: dict) -> None:
    model, tok, tmpl = build(tiny)
    prompts = PromptBuilder(tmpl, tok.vocab, 8, tok.pad_token_id)
    batch = collate([prompts.rec(0, np.array([1, 2])), prompts.rec(None, np.array([3, 4, 5, 6]))], tok.pad_token_id)
    space = GraphSpace(tok.vocab, user_rows(model))  # the graph holds no user row: it comes as an input
    with torch.no_grad():
        torch.testing.assert_close(FoldedUserEncoder(model)(*space.convert(batch["input_ids"], batch["attention_mask"])),
                                   model.user_vectors(**batch))
    assert History.build(load_ml100k(tiny["data"])).ordered(0, np.array([])).size == 0


def test_rec_examples_hold_out_targets_and_label_the_history(trained: tuple[CLLM4RecTask, Path]) -> None:
    task, _ = trained
    v = task.tok.vocab
    rows, targets, labels = task.rec_examples(np.random.default_rng(0))
    for row, tgt, lab in zip(rows, targets, labels, strict=True):
        shown = [t - v.item_offset for t in row if v.item_offset <= t < v.anon_token]
        assert len(tgt) >= 1 and not set(shown) & set(tgt.tolist())
        assert [x for x in lab if x >= 0] == shown and len(lab) == len(row)
    batch = collate(rows[:4], task.tok.pad_token_id)
    batch["targets"] = torch.zeros(4, v.num_items)
    for b in range(4):
        batch["targets"][b, torch.as_tensor(targets[b])] = 1.0
    lab = collate(rows[:4], 0, labels[:4])["labels"]
    with torch.no_grad():
        plain = task.model.rec_loss(**batch)
        joint = task.model.rec_loss(**batch, labels=lab, collab_weight=1.0)
    assert joint > plain


def test_time_budget_stops_before_a_new_epoch(tiny: dict, tmp_path: Path) -> None:
    train_tiny(tiny, tmp_path / "ckpt", "--train.time-budget-min", "1e-9")
    log = json.loads((tmp_path / "ckpt" / "train" / "log.json").read_text())
    assert log["epochs"] == [] and log["stopped"] == "time_budget"
    load_checkpoint(tmp_path / "ckpt")  # the untrained model is still a complete checkpoint


def test_schedules_fill_defaults_and_explicit_flags_win() -> None:
    cfg = parse(cli.TrainCli, ["--schedule", "rec-only", "--train.batch-size", "8"], presets=cli.SCHEDULES)
    assert cli.TrainCli().schedule == "default"
    assert cfg.train.batch_size == 8 and cfg.recipe.rec_collab_weight == 1.0 and cfg.model.max_history == 128
    assert cfg.recipe.content_warmup_epochs == 0 and cfg.recipe.pretrain_rounds == 0 and cfg.train.epochs == 12
    default = parse(cli.TrainCli, [], presets=cli.SCHEDULES)  # rec head, mean pooling, 8 blocks + LoRA; flags still win
    assert (default.recipe.pretrain_rounds, default.lm.depth, default.lm.lora_rank) == (0, 8, 16)
    assert default.model.pooling == "mean" and not default.model.tie_items and default.train.lr == 5e-3
    assert parse(cli.TrainCli, ["--model.pooling", "last"], presets=cli.SCHEDULES).model.pooling == "last"
    assert parse(cli.TrainCli, ["--lm.depth", "0"], presets=cli.SCHEDULES).lm.depth == 0
    full = parse(cli.TrainCli, ["--schedule", "full"], presets=cli.SCHEDULES)
    assert full.recipe.content_warmup_epochs == 1 and full.recipe.pretrain_rounds == 2 and full.train.epochs == 20
    assert parse(cli.TrainCli, ["--schedule", "custom"], presets=cli.SCHEDULES) == cli.TrainCli(schedule="custom")


def test_mean_pooling_skips_padding_and_the_first_token(tiny: dict) -> None:
    model, tok, tmpl = build(tiny, pooling="mean")
    prompts = PromptBuilder(tmpl, tok.vocab, 8, tok.pad_token_id)
    short, long_ = prompts.rec(0, np.array([1])), prompts.rec(1, np.array([2, 3, 4, 5, 6]))
    batch = collate([short, long_], tok.pad_token_id)
    alone = collate([short], tok.pad_token_id)
    with torch.no_grad():
        together = model.user_vectors(**batch)
        h = model.hidden(alone["input_ids"], alone["attention_mask"], model.collab_embeddings)
        torch.testing.assert_close(together[0], model.user_vectors(**alone)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together[0], h[0, 1:].mean(0), atol=1e-5, rtol=1e-5)
        last, _, _ = build(tiny)
        assert not torch.allclose(last.user_vectors(**alone), model.user_vectors(**alone))
        graph_inputs = GraphSpace(tok.vocab, user_rows(model)).convert(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(FoldedUserEncoder(model)(*graph_inputs), together)
    with pytest.raises(ValueError, match="pooling"):
        CLLM4Rec.pool(h, alone["attention_mask"], "max")


def test_untied_items_train_their_own_output_rows(tiny: dict) -> None:
    model, tok, tmpl = build(tiny, tie_items=False)
    u, j = model.vocab.num_users, model.num_items
    assert "item_output" in model.trained_keys() and "item_output" not in build(tiny)[0].trained_keys()
    assert any(p is model.item_output for p in model.id_parameters())
    torch.testing.assert_close(model.item_output, model.collab_embeddings[u : u + j])  # starts at the token rows
    prompts = PromptBuilder(tmpl, tok.vocab, 8, tok.pad_token_id)
    batch = collate([prompts.rec(0, np.array([1, 2])), prompts.rec(1, np.array([3]))], tok.pad_token_id)
    targets = torch.zeros(2, j)
    targets[:, 4] = 1.0
    model.rec_loss(batch["input_ids"], batch["attention_mask"], targets).backward()
    assert model.item_output.grad is not None and model.item_output.grad.abs().sum() > 0
    with torch.no_grad():
        model.item_output.add_(1.0)  # scores follow the output rows, not the token rows
        torch.testing.assert_close(model.item_matrix(), model.item_output * model.feature_scale * model.log_scale.exp())


def test_report_label_names_the_rec_head_levers() -> None:
    from models.cllm4rec.report import default_label

    lm = {"lora_rank": 16, "unfreeze_top": 0, "depth": 8}
    assert default_label({"schedule": "full", "lm": lm, "model": {}}) == "full schedule, 8 blocks, LoRA r16"
    assert default_label({"schedule": "custom", "lm": lm, "model": {"pooling": "mean", "tie_items": False}}) == (
        "custom schedule, 8 blocks, LoRA r16, mean pooling, untied item rows")


def test_a_checkpoint_whose_backbone_folder_moved_loads_the_installed_copy(
        trained: tuple[CLLM4RecTask, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another virtualenv or machine: the recorded folder is gone; the installed default LM is used when
    it is the same file, and the content hash still decides."""
    from common.assets import AssetMissing
    from models.cllm4rec import checkpoint as ck

    task, out = trained
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    cfg = json.loads((moved / "config.json").read_text())
    real = cfg["backbone"]["folder"]
    cfg["backbone"]["folder"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(ck, "resolve", lambda _cfg: (Path(real), cfg["backbone"]["gguf_file"]))
    assert load_checkpoint(moved).model.num_items == task.model.num_items
    monkeypatch.setattr(ck, "resolve", lambda _cfg: (Path(real), "another.gguf"))
    with pytest.raises(AssetMissing, match="no longer exists"):
        load_checkpoint(moved)
    other = tmp_path / "other-lm"
    shutil.copytree(real, other)
    weights = next(other.glob("*.safetensors"))
    weights.rename(other / "renamed.safetensors")  # another file set: another content hash
    monkeypatch.setattr(ck, "resolve", lambda _cfg: (other, cfg["backbone"]["gguf_file"]))
    with pytest.raises(ValueError, match="sha256"):
        load_checkpoint(moved)


def test_eval_refuses_a_rebuilt_split_that_is_not_the_trained_one(trained: tuple[CLLM4RecTask, Path],
                                                                  tmp_path: Path) -> None:
    """The split is rebuilt from the data at eval: its sha256 must be the one recorded at training, or
    eval stops with one line (here the record is altered; a changed data file or split order does the same)."""
    from common.errors import CheckpointError

    task, out = trained
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["split"]["sha256"] == task.split.fingerprint()
    assert load_checkpoint(out).training_data()[1].fingerprint() == task.split.fingerprint()
    bad = tmp_path / "other-split"
    shutil.copytree(out, bad)
    cfg["split"]["sha256"] = "0" * 64
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="is not the one the checkpoint was trained on") as exc:
        cli.eval_main(["--checkpoint", str(bad), "--no-baselines", "--no-serving-cost", "--results-dir", str(tmp_path)])
    assert "\n" not in str(exc.value) and str(bad) in str(exc.value)
    explicit = cfg["command_explicit"]
    assert explicit.startswith("llmrec train cllm4rec --schedule ") and "--lm.lora-rank" in explicit


def test_a_schedule_without_a_content_stage_has_no_content_table_and_trains_the_same_model(tiny: dict,
                                                                                          tmp_path: Path) -> None:
    """The default schedule never reads the content table (no stage A), which is as large as the collaborative
    one: it is left out, and since it was drawn after everything else it changes no trained value."""
    from models.cllm4rec.train import RecipeConfig, with_content_table

    assert with_content_table(ModelConfig(), RecipeConfig(content_warmup_epochs=0, pretrain_rounds=0)).content_table is False
    assert with_content_table(ModelConfig(), RecipeConfig(content_warmup_epochs=1)).content_table is True
    assert with_content_table(ModelConfig(content_table=True), RecipeConfig(content_warmup_epochs=0)).content_table
    rec_only = ["--recipe.content-warmup-epochs", "0", "--recipe.pretrain-rounds", "0", "--recipe.rec-collab-weight",
                "0.5", "--train.epochs", "1"]
    runs = {}
    for table in ("True", "False"):
        out = tmp_path / table
        config = parse(cli.TrainCli, [*cllm4rec_argv(tiny["backbone"], tiny["data"], out), *rec_only,
                                      "--model.content-table", table],
                       presets=cli.SCHEDULES)
        cli.run(cli.build_task(config), config, config.train, out, {})
        runs[table] = load_file(str(out / WEIGHTS))
    with_table, without = runs["True"], runs["False"]
    assert "content_embeddings" in with_table and "content_embeddings" not in without
    for key, value in without.items():
        torch.testing.assert_close(value, with_table[key], rtol=0, atol=0, msg=key)
    config = parse(cli.TrainCli, [*cllm4rec_argv(tiny["backbone"], tiny["data"], tmp_path / "auto"), *rec_only],
                   presets=cli.SCHEDULES)
    task = cli.build_task(config)  # no stage A and nothing asked: no table
    assert task.model.content_embeddings is None and "content_embeddings" not in task.model.trained_keys()
    with pytest.raises(ValueError, match="has no content table"):
        task.model.content_loss(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.long))
    config = parse(cli.TrainCli, [*cllm4rec_argv(tiny["backbone"], tiny["data"], tmp_path / "x"),
                                  "--model.content-table", "False"], presets=cli.SCHEDULES)
    with pytest.raises(ValueError, match=r"drop --model\.content-table False"):
        cli.build_task(config)  # a content warm-up without its table
    loaded = load_checkpoint(tmp_path / "False")
    assert loaded.model.content_embeddings is None and loaded.config["model"]["content_table"] is False
