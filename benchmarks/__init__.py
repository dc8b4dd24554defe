"""Measure every arrow of the data flow, always against the plain PyTorch way in the same run."""
