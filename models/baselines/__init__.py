"""Non-LLM reference recommenders (most-popular, ALS, BPR, EASE), trained on `split.train` only."""

from models.baselines.runner import BASELINES, BaselineResult, fit, run_baselines, run_baselines_detailed

__all__ = ["BASELINES", "BaselineResult", "fit", "run_baselines", "run_baselines_detailed"]
