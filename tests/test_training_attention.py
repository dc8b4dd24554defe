"""Training steps may run another attention kernel than the model's own: eager where the steps run bf16
on a CPU (an sdpa SmolLM2 step took 1.33x an eager one there). The choice, that the
kernel changes the step's speed and not its numbers, and that validation, eval and export keep the
model's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from common.config import parse
from models import tiny
from models.cllm4rec import cli as cllm_cli
from models.training.devices import attention_implementation, hf_models, step_attention
from models.training.loop import Loop

torch.set_num_threads(1)


def test_auto_is_eager_only_for_bf16_steps_on_a_cpu() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert step_attention(cpu, torch.bfloat16, "auto") == "eager"
    assert step_attention(cpu, None, "auto") is None  # fp32: the fused kernel is as fast, keep it
    assert step_attention(gpu, torch.bfloat16, "auto") is None
    assert step_attention(gpu, torch.float16, "eager") == "eager"  # asked for: given
    assert step_attention(cpu, torch.bfloat16, "sdpa") == "sdpa"


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_causal_lm(tmp_path_factory.mktemp("attn") / "lm")


def loss_and_grads(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A loss over the real positions only: the kernels differ on padded query rows (all keys masked),
    whose outputs no CLLM4Rec loss reads."""
    model.zero_grad()
    logp = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
    loss = -(logp.gather(-1, ids[..., None]).squeeze(-1) * mask).sum() / mask.sum()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_eager_steps_give_the_same_loss_and_gradients_and_the_model_gets_its_own_back(lm: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(lm, dtype=torch.float32)
    found = hf_models(torch.nn.ModuleDict({"backbone": model, "head": torch.nn.Linear(2, 2)}))
    assert found == [model]  # the causal LM and its inner model share a config: one entry
    own = model.config._attn_implementation
    assert own == "sdpa"
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding, as the prompts are batched
    ref_loss, ref_grads = loss_and_grads(model, ids, mask)
    with attention_implementation(found, "eager"):
        assert model.config._attn_implementation == "eager" == model.model.config._attn_implementation
        loss, grads = loss_and_grads(model, ids, mask)
    assert model.config._attn_implementation == own
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert len(grads) == len(ref_grads) > 0
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError), attention_implementation(found, "eager"):
        raise RuntimeError("a failing step")
    assert model.config._attn_implementation == own  # put back even when the step fails


@pytest.mark.parametrize("precision,attention,in_step", [("bf16", "auto", "eager"), ("fp32", "auto", "sdpa")])
def test_the_loop_switches_only_around_the_step(tmp_path: Path, lm: Path, monkeypatch, precision: str,
                                                 attention: str, in_step: str) -> None:
    data = tiny.write_ml100k(tmp_path / "ml", users=12, items=20, per_user=7)
    cfg = parse(cllm_cli.TrainCli, [*tiny.cllm4rec_argv(lm, data, tmp_path / "ck"), "--train.epochs", "1",
                                    "--precision", precision, "--attention", attention],
                presets=cllm_cli.SCHEDULES)
    seen: dict[str, set[str]] = {"step": set(), "validation": set()}
    init = Loop.__init__

    def spy(self: Loop, task: Any, *args: Any, **kwargs: Any) -> None:
        loss, validate = task.loss, task.validate
        models = hf_models(task.module)

        def kinds() -> set[str]:
            return {m.config._attn_implementation for m in models}

        def checked_loss(net: Any, batch: Any) -> torch.Tensor:
            seen["step"] |= kinds()
            return loss(net, batch)

        def checked_validate(place: Any) -> dict[str, float]:
            seen["validation"] |= kinds()
            return validate(place)

        task.loss, task.validate = checked_loss, checked_validate
        init(self, task, *args, **kwargs)

    monkeypatch.setattr(Loop, "__init__", spy)
    log = cllm_cli.train(cfg)
    assert seen == {"step": {in_step}, "validation": {"sdpa"}}
    assert log["attention"] == ("eager" if in_step == "eager" else "sdpa" if attention == "sdpa" else "model's own")
