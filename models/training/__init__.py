"""One training engine for every model (CLLM4Rec, TCF).

A model hands the engine a `Task` (its batches, its loss, its validation score, its checkpoint
writer); the engine owns everything else: devices and mixed precision, DDP, the optimizer and
learning-rate schedule, gradient clipping, early stopping, time budgets, resume and the JSON log.
"""
