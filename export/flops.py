"""How much arithmetic the known-user pass is, so its time can be read against the CPU it ran on.

The pass is matrix products over every prompt token (an LM user encoder: its blocks' weights, once per
token), so 2 x (weights feeding MatMul/Gemm) x tokens is its FLOP count up to attention scores and the
element-wise rest, which a ~40-token prompt makes small: a lower bound. Divided by the pass's CPU seconds it
gives the rate reached, comparable with the core's matrix-product peak (docs/training.md measures one),
whatever the CPU: a slow export on a CPU without AMX shows up as a rate near the peak, not as a bug.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

# nodes that pass a weight through unchanged in size on its way to a MatMul (exporters transpose or cast)
PASS_THROUGH = ("Transpose", "Cast", "Identity")


def matmul_weights(graph: Path) -> int:
    """Weights (2-D initializers, directly or through a transpose/cast) multiplied in MatMul/Gemm nodes."""
    model = onnx.load(str(graph), load_external_data=False)
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) == 2}
    for node in model.graph.node:  # nodes are topologically sorted: one pass follows chains of them
        if node.op_type in PASS_THROUGH and node.input and node.input[0] in sizes:
            sizes[node.output[0]] = sizes[node.input[0]]
    return sum(sizes.get(name, 0) for node in model.graph.node if node.op_type in ("MatMul", "Gemm")
               for name in node.input[:2])


def feed_tokens(feeds: dict[str, np.ndarray]) -> tuple[int, int]:
    """(positions computed, real tokens) of one batch: its attention mask's size and sum, or without a
    mask the size of its first 2-D integer input."""
    mask = feeds.get("attention_mask")
    if mask is not None:
        return int(mask.size), int(np.count_nonzero(mask))
    for arr in feeds.values():
        if arr.ndim == 2 and np.issubdtype(arr.dtype, np.integer):
            return int(arr.size), int(arr.size)
    return 0, 0
