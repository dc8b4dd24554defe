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
                                  "--recipe.rec-collab-weight", "1", "--recipe.sampled-rec"], presets=cli.SCHEDULES)
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


def test_the_levers_switch_on_by_size_and_the_checkpoint_records_them(tiny: dict[str, Path]) -> None:
    from models.cllm4rec.train import RecipeConfig, at_scale

    small, switched = at_scale(RecipeConfig(), id_rows=2_625, items=1_682)  # MovieLens-100K: dense, full softmax
    assert switched == {} and not small.sparse_ids and small.item_negatives == 0
    big, switched = at_scale(RecipeConfig(), id_rows=120_000, items=20_000)
    assert switched == {"sparse_ids": True, "item_negatives": 1024} and big.sparse_ids and big.item_negatives == 1024
    rows_only, _ = at_scale(RecipeConfig(), id_rows=60_000, items=5_000)
    assert rows_only.sparse_ids and rows_only.item_negatives == 0
    asked, switched = at_scale(RecipeConfig(item_negatives=64), id_rows=120_000, items=20_000)
    assert asked.item_negatives == 64 and switched == {"sparse_ids": True}  # a value given is kept
    never, switched = at_scale(RecipeConfig(sparse_ids_from_rows=0, sampled_items_from=0), 10**7, 10**6)
    assert switched == {} and not never.sparse_ids and never.item_negatives == 0

    def task_of(*flags: str) -> Any:
        argv = [*cllm4rec_argv(tiny["lm"], tiny["data"], tiny["data"].parent / "unused"), *flags]
        return cli.build_task(parse(cli.TrainCli, argv, presets=cli.SCHEDULES))

    task = task_of("--recipe.sparse-ids-from-rows", "30", "--recipe.sampled-items-from", "20",
                   "--recipe.scale-negatives", "8")  # 12 users + 20 items
    assert task.recipe.sparse_ids and task.recipe.item_negatives == 8 and task.model.sparse_ids
    assert task.extra_config["recipe"]["sparse_ids"] and task.extra_config["recipe"]["item_negatives"] == 8
    flags = task.extra_config["command_explicit"].split()  # rerun, it trains what ran, whatever the thresholds
    assert "--recipe.sparse-ids" in flags and flags[flags.index("--recipe.item-negatives") + 1] == "8"
    dense = task_of("--recipe.sparse-ids-from-rows", "33", "--recipe.sampled-items-from", "21")
    assert not dense.recipe.sparse_ids and dense.recipe.item_negatives == 0 and not dense.model.sparse_ids


def test_the_proposal_mixes_popularity_with_uniform_and_log_q_follows(tiny: dict[str, Path], tmp_path: Path) -> None:
    def task_of(*flags: str) -> Any:
        argv = [*cllm4rec_argv(tiny["lm"], tiny["data"], tmp_path / "c"), "--recipe.item-negatives", "5", *flags]
        return cli.build_task(parse(cli.TrainCli, argv, presets=cli.SCHEDULES))

    pop, half, flat = task_of(), task_of("--recipe.negatives-uniform", "0.5"), task_of("--recipe.negatives-uniform", "1")
    n = pop.data.num_items
    q_pop = np.exp(pop.item_log_q.astype(np.float64))
    assert q_pop.max() / q_pop.min() > 2  # popularity: far from flat on this data
    np.testing.assert_allclose(np.exp(flat.item_log_q), 1.0 / n, rtol=1e-5)
    np.testing.assert_allclose(np.exp(half.item_log_q), 0.5 * q_pop + 0.5 / n, rtol=1e-5)
    for task in (pop, half, flat):  # the sampler draws from the Q that log Q corrects for
        np.testing.assert_allclose(np.diff(task.item_cdf, prepend=0.0), np.exp(task.item_log_q), rtol=1e-5)
        assert task.item_cdf[-1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="negatives_uniform"):
        task_of("--recipe.negatives-uniform", "1.5")


def test_with_the_rec_loss_full_only_the_collaborative_loss_samples(tiny: dict[str, Path], tmp_path: Path) -> None:
    argv = [*cllm4rec_argv(tiny["lm"], tiny["data"], tmp_path / "c"), "--recipe.item-negatives", "3",
            "--recipe.rec-collab-weight", "1", "--lm.lora-rank", "2"]  # default: only the collaborative loss samples
    task = cli.build_task(parse(cli.TrainCli, argv, presets=cli.SCHEDULES))
    rows, targets, labels = task.rec_examples(np.random.default_rng(0))
    idx = np.array([0, 2, 5])
    batch = task._rec_batch(rows, targets, labels, idx, seed=7)
    cand = batch["candidates"].numpy()
    assert batch["rec_full"] and batch["targets"].shape == (3, task.data.num_items)
    for k, i in enumerate(idx):
        assert set(np.flatnonzero(batch["targets"][k].numpy())) == set(targets[i].tolist())
        lab = batch["labels"][k]
        assert cand[lab[lab != IGNORE].numpy()].tolist() == [j for j in labels[i] if j != IGNORE]
    model = task.model
    model.eval()
    with torch.no_grad():
        both = model("rec", **{k: v for k, v in batch.items() if k != "task"})
        rec_only = model.rec_loss(batch["input_ids"], batch["attention_mask"], batch["targets"],
                                  reg=batch["reg"])  # full softmax (+ the mutual regularizer when the recipe has one)
        h = model.hidden(batch["input_ids"], batch["attention_mask"], model.collab_embeddings)
        hs, nxt = model._next_token_positions(h, batch["labels"])
        collab = torch.nn.functional.cross_entropy(model.item_logits(model.score_space(hs), batch["candidates"],
                                                                     batch["log_q"]), nxt)
    torch.testing.assert_close(both, rec_only + collab)
    # the gradient: the prompt's side gets the full softmax's; the item rows, the candidates' only
    model.train()
    x = (batch["input_ids"], batch["attention_mask"], batch["targets"])

    def grads(**kw: Any) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.rec_loss(*x, **kw).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full = grads()
    part = grads(candidates=batch["candidates"], log_q=batch["log_q"], rec_full=True)
    lm = [n for n in full if "lora" in n]
    assert lm and all(torch.allclose(part[n], full[n], atol=1e-6) for n in lm)
    table = "item_output" if model.item_output is not None else "collab_embeddings"
    first = 0 if model.item_output is not None else model.vocab.item_row
    rows_full = full[table][first : first + task.data.num_items]
    rows_part = part[table][first : first + task.data.num_items]
    others = np.setdiff1d(np.arange(task.data.num_items), cand)
    assert len(others) and rows_part[others].abs().sum() == 0 and rows_full[others].abs().sum() > 0
    torch.testing.assert_close(rows_part[cand], rows_full[cand])
    users = slice(0, first) if table == "collab_embeddings" else slice(None)  # the user rows: the prompt's side
    torch.testing.assert_close(part["collab_embeddings"][users], full["collab_embeddings"][users])
