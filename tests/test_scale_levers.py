"""The levers that keep a CLLM4Rec step's cost independent of the numbers of users and items, and the
step-level time budget, on tiny random LMs: row-wise Adam, sparse ID gradients, the sampled item
softmax with its logQ correction, the model without user parameters, and that a model trained with
them resumes exactly and still exports."""

from __future__ import annotations

import json
from pathlib import Path
from time import process_time as cpu_clock
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_kit import die_before

from common.config import parse
from export.cli import main as export_main
from models.cllm4rec import cli
from models.cllm4rec.backbone import BackboneConfig, load_backbone
from models.cllm4rec.checkpoint import load_checkpoint
from models.cllm4rec.model import CLLM4Rec, ModelConfig
from models.cllm4rec.prompts import IGNORE, Template, collate
from models.cllm4rec.scoring import PromptBuilder
from models.cllm4rec.tokens import IdTokenizer, IdVocab
from models.data.loaders import load_ml100k
from models.tiny import cllm4rec_argv, write_causal_lm, write_ml100k
from models.training import loop as loop_module
from models.training.loop import Stage
from models.training.optim import RowAdamW
from repository.versions import verify_version

torch.set_num_threads(1)
LEVERS = ("--recipe.sparse-ids", "--recipe.item-negatives", "6", "--model.no-user-tokens")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("levers")
    return {"lm": write_causal_lm(root / "lm"), "data": write_ml100k(root / "ml", users=12, items=20, per_user=7)}


def build(tiny: dict[str, Path], **cfg: Any) -> tuple[CLLM4Rec, IdTokenizer, Template]:
    data = load_ml100k(tiny["data"])
    backbone, hf_tok = load_backbone(BackboneConfig(path=tiny["lm"]))
    tok = IdTokenizer(hf_tok, data.num_users, data.num_items, cfg.get("user_tokens", True))
    torch.manual_seed(0)
    return CLLM4Rec(ModelConfig(**cfg), backbone, tok.vocab), tok, Template.build(tok)


def rec_batch(tok: IdTokenizer, tmpl: Template, users: list[int]) -> dict[str, torch.Tensor]:
    v = tok.vocab
    prompts = PromptBuilder(tmpl, v, 8, tok.pad_token_id)
    rows = [prompts.rec(u, np.arange(u, u + 4)) for u in users]
    batch = collate(rows, tok.pad_token_id)
    y = torch.zeros(len(users), v.num_items)
    y[torch.arange(len(users)), torch.tensor(users) + 10] = 1.0
    batch["targets"] = y
    labels = torch.full_like(batch["input_ids"], IGNORE)
    items = (batch["input_ids"] >= v.item_offset) & (batch["input_ids"] < v.anon_token)
    labels[items] = batch["input_ids"][items] - v.item_offset
    batch["labels"] = labels
    return batch


def test_row_adamw_is_adamw_on_the_rows_it_is_given_and_leaves_the_others_alone() -> None:
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    dense, rows, partial = (torch.nn.Parameter(start.clone()) for _ in range(3))
    opts = [torch.optim.AdamW([dense], lr=0.1, weight_decay=0.01), RowAdamW([rows], lr=0.1, weight_decay=0.01),
            RowAdamW([partial], lr=0.1, weight_decay=0.01)]
    for _ in range(3):
        g = torch.randn(6, 3)
        dense.grad, rows.grad = g.clone(), g.to_sparse(1)
        partial.grad = torch.sparse_coo_tensor(torch.tensor([[1, 4]]), g[[1, 4]], (6, 3), check_invariants=True)
        for opt in opts:
            opt.step()
    torch.testing.assert_close(rows.detach(), dense.detach(), atol=1e-6, rtol=1e-6)
    untouched = [0, 2, 3, 5]
    assert torch.equal(partial.detach()[untouched], start[untouched])
    assert not torch.equal(partial.detach()[[1, 4]], start[[1, 4]])
    assert opts[2].state[partial]["exp_avg"][untouched].abs().sum() == 0
    # dense parameters: exactly torch's AdamW
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    oa, ob = torch.optim.AdamW([a], lr=0.1), RowAdamW([b], lr=0.1)
    for _ in range(2):
        g = torch.randn(6, 3)
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert torch.equal(a, b)


def test_row_adagrad_keeps_one_value_per_row_and_moves_only_the_rows_it_is_given() -> None:
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    p = torch.nn.Parameter(start.clone())
    opt = RowAdamW([{"params": [p], "lr": 0.1, "weight_decay": 0.01, "row_rule": "adagrad"}], eps=1e-8)
    want, acc = start.clone(), torch.zeros(6)
    for step in range(3):
        g = torch.randn(6, 3)
        rows = torch.tensor([1, 4] if step < 2 else [1, 1, 2])  # a repeated row's gradients add up
        p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), g[rows], (6, 3), check_invariants=True)
        opt.step()
        dense = torch.zeros(6, 3).index_add_(0, rows, g[rows])
        for r in rows.unique():  # the reference: row-wise Adagrad with decoupled weight decay, by hand
            acc[r] += dense[r].pow(2).mean()
            want[r] = want[r] * (1 - 0.1 * 0.01) - 0.1 * dense[r] / (acc[r].sqrt() + 1e-8)
    torch.testing.assert_close(p.detach(), want, atol=1e-6, rtol=1e-6)
    assert torch.equal(p.detach()[[0, 3, 5]], start[[0, 3, 5]])
    assert set(opt.state[p]) == {"step", "sum_sq"} and opt.state[p]["sum_sq"].shape == (6,)
    with pytest.raises(ValueError, match="unknown row_rule"):
        bad = RowAdamW([{"params": [p], "row_rule": "sgd"}])
        p.grad = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 3), (6, 3))
        bad.step()


def test_row_adagrad_trains_resumes_exactly_and_needs_sparse_ids(tiny: dict[str, Path], tmp_path: Path) -> None:
    flags = (*LEVERS, "--recipe.id-optimizer", "adagrad")
    _train(tiny, tmp_path / "whole", *flags)
    _train(tiny, tmp_path / "parts", *flags, stop_before=("rec", 1))
    _train(tiny, tmp_path / "parts", *flags)  # resumes with the per-row accumulators
    whole = load_file(str(tmp_path / "whole" / "weights.safetensors"))
    parts = load_file(str(tmp_path / "parts" / "weights.safetensors"))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    assert all(torch.isfinite(v).all() for v in whole.values())
    config = parse(cli.TrainCli, [*cllm4rec_argv(tiny["lm"], tiny["data"], tmp_path / "x"), "--recipe.id-optimizer",
                                  "adagrad"], presets=cli.SCHEDULES)
    with pytest.raises(ValueError, match=r"add --recipe\.sparse-ids"):
        cli.build_task(config)


def test_sparse_ids_give_the_same_loss_and_gradient_on_the_batch_rows_only(tiny: dict[str, Path]) -> None:
    model, tok, tmpl = build(tiny, item_bias=True)
    batch = rec_batch(tok, tmpl, [0, 3, 5])
    grads = []
    for sparse in (False, True):
        model.sparse_ids = sparse
        model.zero_grad(set_to_none=True)
        loss = model.rec_loss(**batch, collab_weight=1.0, reg=True)
        loss.backward()
        grads.append((float(loss.detach()), model.collab_embeddings.grad))
    (dense_loss, dense), (sparse_loss, sparse) = grads
    assert not dense.is_sparse and sparse.is_sparse
    assert sparse_loss == pytest.approx(dense_loss, rel=1e-6)
    torch.testing.assert_close(sparse.to_dense(), dense, atol=1e-6, rtol=1e-5)
    n, v = tok.vocab.vocab_size, tok.vocab
    read = set((batch["input_ids"][batch["input_ids"] >= n] - n).tolist())
    every_item = set(range(v.item_row, v.item_row + v.num_items))  # full softmax: every item row is scored
    assert set(sparse.coalesce().indices()[0].tolist()) == read | every_item
    assert model.content_embeddings.grad is None  # the mutual regularizer reads it detached


def test_sampled_softmax_over_every_item_with_a_flat_q_is_the_full_softmax(tiny: dict[str, Path]) -> None:
    model, tok, tmpl = build(tiny, item_bias=True, tie_items=False)
    batch = rec_batch(tok, tmpl, [1, 2, 7])
    full = model.rec_loss(**batch, collab_weight=1.0)
    every = torch.arange(tok.vocab.num_items)
    flat = torch.full((tok.vocab.num_items,), -3.0)  # log Q of a uniform proposal: a constant shift
    sampled = model.rec_loss(**batch, collab_weight=1.0, candidates=every, log_q=flat)
    torch.testing.assert_close(sampled, full)
    # a subset: only those items' output rows get a gradient (sparse), and logQ moves the loss
    model.sparse_ids = True
    some = torch.tensor([0, 4, 11, 12, 13, 17])
    small = {**batch, "targets": batch["targets"][:, some], "labels": torch.full_like(batch["labels"], IGNORE)}
    loss = model.rec_loss(**small, candidates=some, log_q=torch.zeros(6))
    loss.backward()
    assert set(model.item_output.grad.coalesce().indices()[0].tolist()) == set(some.tolist())
    shifted = model.rec_loss(**small, candidates=some, log_q=torch.linspace(-4, -1, 6))
    assert float(shifted.detach()) != pytest.approx(float(loss.detach()))


def test_a_batch_of_candidates_holds_its_positives_and_relabels_into_them(tiny: dict[str, Path], tmp_path: Path) -> None:
    config = parse(cli.TrainCli, [*cllm4rec_argv(tiny["lm"], tiny["data"], tmp_path / "c"), "--recipe.item-negatives", "5",
                                  "--recipe.rec-collab-weight", "1"], presets=cli.SCHEDULES)
    task = cli.build_task(config)
    rng = np.random.default_rng(0)
    rows, targets, labels = task.rec_examples(rng)
    idx = np.array([0, 2, 5])
    a, b = task._rec_batch(rows, targets, labels, idx, seed=7), task._rec_batch(rows, targets, labels, idx, seed=7)
    cand = a["candidates"].numpy()
    assert np.array_equal(cand, b["candidates"].numpy()) and np.all(np.diff(cand) > 0)  # same seed, same set
    for k, i in enumerate(idx):
        assert set(cand[a["targets"][k].numpy() > 0]) == set(targets[i].tolist())
        lab = a["labels"][k]
        assert cand[lab[lab != IGNORE].numpy()].tolist() == [j for j in labels[i] if j != IGNORE]
    assert len(cand) < task.data.num_items + 5 and torch.equal(a["log_q"], torch.from_numpy(task.item_log_q[cand]))
    # the loop draws one seed per batch only when negatives are asked for
    builders = task.epoch_batches(Stage("rec", 1), 0, np.random.default_rng(1))
    assert builders[0]().get("candidates") is not None


def test_without_user_tokens_the_tables_do_not_grow_with_users(tiny: dict[str, Path]) -> None:
    few, many = IdVocab(300, 10, 20, user_tokens=False), IdVocab(300, 10_000, 20, user_tokens=False)
    assert few.id_rows == many.id_rows == 21 and many.item_offset == 300 and many.anon_token == 320
    assert many.user(9_999) == many.anon_token
    with pytest.raises(ValueError, match="out of range"):
        many.user(10_000)
    model, tok, tmpl = build(tiny, user_tokens=False)
    v = tok.vocab
    assert model.collab_embeddings.shape[0] == v.num_items + 1 and tok.tokens([v.anon_token]) == ["user_anon"]
    prompt = PromptBuilder(tmpl, v, 8, tok.pad_token_id).rec(3, np.array([1, 2]))
    assert prompt[0] == v.anon_token and v.item(1) in prompt
    with pytest.raises(ValueError, match="user_tokens"):
        CLLM4Rec(ModelConfig(user_tokens=True), model.backbone, v)


def _train(tiny: dict[str, Path], out: Path, *flags: str, stop_before: tuple[str, int] | None = None) -> None:
    args = [*cllm4rec_argv(tiny["lm"], tiny["data"], out), "--recipe.pretrain-rounds", "1", "--train.epochs", "3",
            "--recipe.rec-collab-weight", "1", "--train.max-grad-norm", "0.5", *flags]
    config = parse(cli.TrainCli, args, presets=cli.SCHEDULES)
    task = cli.build_task(config)
    if stop_before is not None:
        die_before(task, stop_before)
        with pytest.raises(KeyboardInterrupt):
            cli.run(task, config, config.train, out, {})
        return
    cli.run(task, config, config.train, out, {})


def test_levers_resume_exactly_and_the_model_exports(tiny: dict[str, Path], tmp_path: Path) -> None:
    _train(tiny, tmp_path / "whole", *LEVERS)
    _train(tiny, tmp_path / "parts", *LEVERS, stop_before=("rec", 1))
    _train(tiny, tmp_path / "parts", *LEVERS)  # resumes: row-wise moments and the negatives' seeds included
    whole = load_file(str(tmp_path / "whole" / "weights.safetensors"))
    parts = load_file(str(tmp_path / "parts" / "weights.safetensors"))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    loaded = load_checkpoint(tmp_path / "whole")
    assert not loaded.model.cfg.user_tokens and whole["collab_embeddings"].shape[0] == loaded.tokenizer.vocab.num_items + 1
    rc = export_main(["--checkpoint", str(tmp_path / "whole"), "--repository", str(tmp_path / "repo"), "--name", "c",
                      "--no-report"])
    assert rc == 0
    m = verify_version(tmp_path / "repo" / "c" / "1").to_dict()
    par = m["parity"]["user_encoder"]
    assert par["max_abs_err"] <= 1e-4 and par["topk_identical"]
    assert m["cllm4rec"]["item_token_offset"] == m["cllm4rec"]["user_token_offset"]  # no user tokens in the layout


def test_the_time_budget_cuts_an_epoch_after_the_step_that_spends_it(tiny: dict[str, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": 1000.0}

    class FakeTime:
        @staticmethod
        def time() -> float:
            return clock["now"]

        process_time = staticmethod(cpu_clock)  # CPU seconds stay real: only the budget reads the clock

    monkeypatch.setattr(loop_module, "time", FakeTime)
    out = tmp_path / "ck"
    args = [*cllm4rec_argv(tiny["lm"], tiny["data"], out), "--recipe.content-warmup-epochs", "0",
            "--train.time-budget-min", "1.5", "--train.epochs", "3"]
    config = parse(cli.TrainCli, args, presets=cli.SCHEDULES)
    task = cli.build_task(config)
    steps = len(task.epoch_batches(Stage("rec", 3), 0, np.random.default_rng(0)))
    assert steps >= 3
    real_loss = task.loss

    def slow_loss(net: Any, batch: Any) -> torch.Tensor:
        clock["now"] += 60.0  # every step "takes" a minute: the second one spends the 1.5-minute budget
        return real_loss(net, batch)

    task.loss = slow_loss  # type: ignore[method-assign]
    result = cli.run(task, config, config.train, out, {})
    assert result["stopped"] == "time_budget"
    [epoch] = result["epochs"]
    assert epoch["cut"] == "time_budget" and epoch["steps"] == 2 < steps and "valid" in epoch
    assert result["best"]["epoch"] == 1  # the partial epoch was validated and kept
    log = json.loads((out / "train" / "log.json").read_text())
    assert log["stopped"] == "time_budget" and (out / "train" / "state.safetensors").is_file()
    load_checkpoint(out)  # the best (here: the partial) epoch's checkpoint is complete
