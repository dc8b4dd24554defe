"""`llmrec recommend --target host:port --model NAME --user ID | --history a,b,c --top-k 10`:
prints rank, item id, title and score (titles come in the response)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import tyro


@dataclass
class RecommendArgs:
    model: str
    """model name in the server's repository"""
    target: str = "localhost:50051"
    user: str = ""
    """a known user's id"""
    history: str = ""
    """comma-separated item ids, oldest first"""
    top_k: int = 10
    version: int = 0
    """0 = the newest loaded version"""
    exclude_history: bool = False
    allow_unknown_items: bool = False
    tls_ca: Path | None = None
    timeout: float = 10.0


def main(argv: list[str]) -> int:
    args = tyro.cli(RecommendArgs, args=argv, prog="llmrec recommend",
                    description="Ask a running llmrec server for recommendations.")
    from server.client import RecommenderClient

    history = [x.strip() for x in args.history.split(",") if x.strip()]
    if not args.user and not history:
        print("llmrec recommend: give --user ID and/or --history a,b,c", file=sys.stderr)
        return 2
    with RecommenderClient(args.target, tls_ca=args.tls_ca, timeout=args.timeout) as client:
        try:
            rec = client.recommend(args.model, user_id=args.user, history=history, top_k=args.top_k,
                                   version=args.version, exclude_history=args.exclude_history,
                                   allow_unknown_items=args.allow_unknown_items)
        except grpc.RpcError as exc:
            print(f"llmrec recommend: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(f"# {rec.model} v{rec.version}" + (f"  (unknown items dropped: {', '.join(rec.unknown_item_ids)})"
                                             if rec.unknown_item_ids else ""))
    width = max([len(i) for i, _ in rec.items] + [7])
    print(f"{'rank':>4}  {'item_id':<{width}}  {'score':>9}  title")
    for rank, ((item, score), title) in enumerate(zip(rec.items, rec.titles, strict=True), start=1):
        print(f"{rank:>4}  {item:<{width}}  {score:>9.4f}  {title}")
    return 0
