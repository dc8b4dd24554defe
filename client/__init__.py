"""The Python gRPC client of the Recommender service (the `llmrec recommend` CLI, the health probe and
the benchmarks use it). Depends only on the contract in proto/."""

from client.recommender import RecommenderClient

__all__ = ["RecommenderClient"]
