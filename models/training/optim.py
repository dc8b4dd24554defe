"""The loop's optimizer: AdamW, plus lazy row-wise updates for parameters whose gradient is sparse.

Why: CLLM4Rec's ID tables have a row per user and per item. With dense gradients every step builds a
gradient of the whole table and AdamW rewrites both moments and every row, whether or not the row
was in the batch: the step's cost grows with the number of users and items (about 138M values a step
at 100k users). A table read with `F.embedding(..., sparse=True)` gets a sparse gradient instead,
holding only the batch's rows; this optimizer then updates only those rows and their moments (the
"lazy Adam" of torch.optim.SparseAdam: a row's moments decay only on the steps that touch it), with
AdamW's decoupled weight decay on the same rows. Dense gradients go through torch's AdamW unchanged,
so a model without sparse parameters trains exactly as with AdamW.

Both kinds keep their state under AdamW's keys (step, exp_avg, exp_avg_sq), so the state dict, the
resume state (models.training.state) and the LR schedulers see one ordinary optimizer.

A parameter group with `"row_rule": "adagrad"` updates its sparse parameters by row-wise Adagrad instead
(the rule of FBGEMM's and TorchRec's fused embedding optimizers): one accumulated mean squared gradient
per row (state key `sum_sq`, shape [rows]) and no momentum, w <- w - lr g / (sqrt(sum_sq) + eps). Why:
lazy Adam keeps two moments as large as the table, which at 10M users is 43 GiB next to 22 GiB of rows;
this keeps rows / hidden of that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class RowAdamW(torch.optim.AdamW):
    """AdamW whose parameters may have sparse gradients (updated row by row, lazily)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        sparse = [(p, group) for group in self.param_groups for p in group["params"]
                  if p.grad is not None and p.grad.is_sparse]
        if not sparse:
            return super().step(closure)
        if closure is not None:
            raise ValueError("RowAdamW takes no closure when some gradients are sparse")
        grads = [p.grad for p, _ in sparse]
        for p, _ in sparse:
            p.grad = None  # AdamW refuses sparse gradients: it steps the dense ones alone
        try:
            super().step()
        finally:
            for (p, _), g in zip(sparse, grads, strict=True):
                p.grad = g
        for (p, group), g in zip(sparse, grads, strict=True):
            self._row_step(p, g, group)
        return None

    def _row_step(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        if group.get("amsgrad") or group.get("maximize"):
            raise ValueError("RowAdamW: amsgrad and maximize are not supported with sparse gradients")
        rule = group.get("row_rule", "adam")
        if rule == "adagrad":
            self._row_adagrad(p, grad, group)
            return
        if rule != "adam":
            raise ValueError(f"unknown row_rule {rule!r}; accepted: adam, adagrad")
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        lr, eps, wd = float(group["lr"]), group["eps"], group["weight_decay"]
        rows, values = _rows(grad, p.dtype)
        if rows.numel() == 0:
            return
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m_rows = m.index_select(0, rows).mul_(beta1).add_(values, alpha=1 - beta1)
        v_rows = v.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
        m.index_copy_(0, rows, m_rows)
        v.index_copy_(0, rows, v_rows)
        weights = p.index_select(0, rows)
        if wd:
            weights.mul_(1 - lr * wd)
        denom = (v_rows / (1 - beta2**step)).sqrt_().add_(eps)
        weights.addcdiv_(m_rows, denom, value=-lr / (1 - beta1**step))
        p.index_copy_(0, rows, weights)

    def _row_adagrad(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["sum_sq"] = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
        state["step"] += 1
        lr, eps, wd = float(group["lr"]), group["eps"], group["weight_decay"]
        rows, values = _rows(grad, p.dtype)
        if rows.numel() == 0:
            return
        acc = state["sum_sq"]
        acc_rows = acc.index_select(0, rows).add_(values.pow(2).mean(1))
        acc.index_copy_(0, rows, acc_rows)
        weights = p.index_select(0, rows)
        if wd:
            weights.mul_(1 - lr * wd)
        weights.addcdiv_(values, acc_rows.sqrt().add_(eps).unsqueeze(1), value=-lr)
        p.index_copy_(0, rows, weights)


def _rows(grad: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices, their gradient rows) of a row-sparse gradient, duplicates summed."""
    if grad.sparse_dim() != 1:  # rows sparse, row contents dense: the layout F.embedding(sparse=True) gives
        grad = grad.to_dense().to_sparse(1)
    grad = grad.coalesce()
    return grad.indices()[0], grad.values().to(dtype)
