"""Client commands against a running server: `llmrec recommend`, and the admin side `llmrec models`,
`llmrec upsert`, `llmrec delete`, `llmrec reload`; and `llmrec journal compact` on a model's item journal.

Admin calls need the server's token: `--admin-token` or RECSYS_ADMIN_TOKEN (kept out of `ps` that
way). Every failure is one line on stderr with the gRPC status and exit code 1; bad usage exits 2.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import tyro
from google.protobuf.json_format import MessageToDict

from client import RecommenderClient


@dataclass
class Server:
    target: str = "localhost:50051"
    """host:port of the server"""
    tls_ca: Path | None = None
    """CA certificate (PEM) when the server uses TLS"""
    timeout: float = 30.0
    admin_token: str = ""
    """admin token for upsert/delete/reload (default: RECSYS_ADMIN_TOKEN)"""
    min_journal_seq: int = 0
    """consistency token: answer only from a replica that has applied this item-journal sequence number (the
    "journal seq" that llmrec upsert/delete print); within one command every call passes on the newest"""

    def client(self) -> RecommenderClient:
        token = self.admin_token or os.environ.get("RECSYS_ADMIN_TOKEN") or None
        return RecommenderClient(self.target, admin_token=token, tls_ca=self.tls_ca, timeout=self.timeout,
                                 min_journal_seq=self.min_journal_seq)


@dataclass
class RecommendArgs:
    model: str
    """model name in the server's repository"""
    server: Server
    user: str = ""
    """a known user's id"""
    history: str = ""
    """comma-separated item ids, oldest first"""
    top_k: int = 10
    version: int = 0
    """0 = the newest loaded version"""
    include_history: bool = False
    """also return items the user has already seen (left out by default)"""
    allow_unknown_items: bool = False
    json: bool = False
    """print the answer as one JSON object"""


@dataclass
class ModelsArgs:
    server: Server
    json: bool = False


@dataclass
class UpsertArgs:
    model: str
    file: Path
    """items to add or replace: CSV with a header (item_id, text[, title]) or JSON lines
    ({"item_id": ..., "text": ..., "title": ...})"""
    server: Server
    batch_size: int = 256
    """items per UpsertItems call (at most the server's --max-upsert-items)"""


@dataclass
class DeleteArgs:
    model: str
    server: Server
    items: str = ""
    """comma-separated item ids"""
    file: Path | None = None
    """or a file of item ids: one per line, or a CSV/JSONL items file (its item_id column)"""
    batch_size: int = 256


@dataclass
class ReloadArgs:
    server: Server


@dataclass
class CompactArgs:
    model: str
    repository: Path | None = None
    """the model repository (the file journal is <repository>/<model>/items.journal); not needed with --journal"""
    journal: str = ""
    """the servers' --journal: "" for the file, or redis://HOST:PORT/DB for a Redis stream"""


def _fail(command: str, exc: grpc.RpcError) -> int:
    print(f"llmrec {command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 1


def recommend_main(argv: list[str]) -> int:
    args = tyro.cli(tyro.conf.OmitArgPrefixes[RecommendArgs], args=argv, prog="llmrec recommend",
                    description="Ask a running llmrec server for recommendations.")
    history = [x.strip() for x in args.history.split(",") if x.strip()]
    if not args.user and not history:
        print("llmrec recommend: give --user ID and/or --history a,b,c", file=sys.stderr)
        return 2
    with args.server.client() as client:
        try:
            rec = client.recommend(args.model, user_id=args.user, history=history, top_k=args.top_k,
                                   version=args.version, include_history=args.include_history,
                                   allow_unknown_items=args.allow_unknown_items)
        except grpc.RpcError as exc:
            return _fail("recommend", exc)
    if args.json:
        print(json.dumps({"model": rec.model, "version": rec.version, "request_id": rec.request_id,
                          "journal_seq": rec.journal_seq,
                          "known_user": rec.known_user, "unknown_item_ids": rec.unknown_item_ids,
                          "items": [{"item_id": i, "score": s, "title": t}
                                    for (i, s), t in zip(rec.items, rec.titles, strict=True)]}))
        return 0
    print(f"# {rec.model} v{rec.version}" + (f" (journal seq {rec.journal_seq})" if rec.journal_seq else "") + (f"  (unknown items dropped: {', '.join(rec.unknown_item_ids)})"
                                             if rec.unknown_item_ids else ""))
    width = max([len(i) for i, _ in rec.items] + [7])
    print(f"{'rank':>4}  {'item_id':<{width}}  {'score':>9}  title")
    for rank, ((item, score), title) in enumerate(zip(rec.items, rec.titles, strict=True), start=1):
        print(f"{rank:>4}  {item:<{width}}  {score:>9.4f}  {title}")
    return 0


def models_main(argv: list[str]) -> int:
    args = tyro.cli(tyro.conf.OmitArgPrefixes[ModelsArgs], args=argv, prog="llmrec models", description="List a server's loaded models.")
    with args.server.client() as client:
        try:
            resp = client.list_models()
        except grpc.RpcError as exc:
            return _fail("models", exc)
    if args.json:
        print(json.dumps(MessageToDict(resp, preserving_proto_field_name=True)))
        return 0
    print(f"{'model':<24} {'version':>7} {'kind':<9} {'towers':<12} {'items':>8} {'users':>7} {'index':<6} status")
    for m in resp.models:
        for v in m.versions:
            status = ("default" if v.is_default else "pinned" if v.pinned else "loaded") + \
                     ("" if v.serving else ", NOT_SERVING")
            print(f"{m.name:<24} {v.version:>7} {v.kind:<9} {v.user_tower + '/' + v.item_tower:<12} "
                  f"{v.num_items:>8} {v.num_users:>7} {v.index_type:<6} {status}")
    return 0


def read_items(path: Path) -> Iterator[tuple[str, str, str]]:
    """(item_id, text, title) from a CSV with a header or JSON lines; errors name file:line."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8") as f:
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    yield str(d["item_id"]), str(d.get("text", "")), str(d.get("title", "") or "")
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{n}: expected a JSON object with item_id and text ({exc})") from None
            return
        reader = csv.DictReader(f)
        if not reader.fieldnames or "item_id" not in reader.fieldnames:
            raise ValueError(f"{path}: expected a CSV header with item_id, text[, title]; got {reader.fieldnames}")
        for n, row in enumerate(reader, start=2):
            if row.get("item_id") in (None, ""):
                raise ValueError(f"{path}:{n}: empty item_id")
            yield row["item_id"], row.get("text") or "", row.get("title") or ""


def _in_batches(command: str, call: Callable[[list], Any], values: list, size: int) -> list[Any] | int:
    """The responses of `call` over `values` in batches; on an RPC error, says how far it got (what was
    sent before stays: each call is durable) and returns the exit code."""
    responses: list[Any] = []
    for start in range(0, len(values), size):
        try:
            responses.append(call(values[start:start + size]))
        except grpc.RpcError as exc:
            print(f"llmrec {command}: stopped after {start} of {len(values)} items (those are kept)", file=sys.stderr)
            return _fail(command, exc)
    return responses


def upsert_main(argv: list[str]) -> int:
    args = tyro.cli(tyro.conf.OmitArgPrefixes[UpsertArgs], args=argv, prog="llmrec upsert",
                    description="Add or replace items of a text model by their text (admin).")
    try:
        items = list(read_items(args.file))
    except ValueError as exc:
        print(f"llmrec upsert: {exc}", file=sys.stderr)
        return 2
    with args.server.client() as client:
        done = _in_batches("upsert", lambda part: client.upsert_items(args.model, part), items, args.batch_size)
    if isinstance(done, int):
        return done
    print(f"{args.model}: {sum(r.added for r in done)} added, {sum(r.replaced for r in done)} replaced; "
          f"{done[-1].num_items} items now (journal seq {done[-1].journal_seq})")
    return 0


def delete_main(argv: list[str]) -> int:
    args = tyro.cli(tyro.conf.OmitArgPrefixes[DeleteArgs], args=argv, prog="llmrec delete",
                    description="Stop recommending items, on every replica (admin).")
    ids = [x.strip() for x in args.items.split(",") if x.strip()]
    if args.file is not None:
        try:
            if args.file.suffix.lower() in (".csv", ".jsonl", ".ndjson", ".json"):
                ids += [item_id for item_id, _, _ in read_items(args.file)]
            else:
                ids += [line.strip() for line in args.file.read_text().splitlines() if line.strip()]
        except (ValueError, OSError) as exc:
            print(f"llmrec delete: {exc}", file=sys.stderr)
            return 2
    if not ids:
        print("llmrec delete: give --items a,b,c and/or --file FILE", file=sys.stderr)
        return 2
    with args.server.client() as client:
        done = _in_batches("delete", lambda part: client.delete_items(args.model, part), ids, args.batch_size)
    if isinstance(done, int):
        return done
    print(f"{args.model}: {sum(r.deleted for r in done)} deleted, {sum(r.already_deleted for r in done)} already "
          f"deleted; {done[-1].num_items} items recommendable (journal seq {done[-1].journal_seq})")
    return 0


def reload_main(argv: list[str]) -> int:
    args = tyro.cli(tyro.conf.OmitArgPrefixes[ReloadArgs], args=argv, prog="llmrec reload",
                    description="Rescan the server's model repository now (admin).")
    with args.server.client() as client:
        try:
            r = client.reload()
        except grpc.RpcError as exc:
            return _fail("reload", exc)
    for what, values in (("loaded", r.loaded), ("unloaded", r.unloaded), ("refused", r.refused),
                         ("serving", r.serving)):
        print(f"{what}: {', '.join(values) if values else '-'}")
    return 1 if r.refused else 0


def journal_compact_main(argv: list[str]) -> int:
    args = tyro.cli(CompactArgs, args=argv, prog="llmrec journal compact",
                    description="Rewrite a model's item journal as its effective state (per item its last upsert, "
                    "and its delete if deleted since), sequence numbers kept, under a new identity: running "
                    "replicas rebuild to the same catalogue (docs/model-repository.md).")
    from repository import journal

    try:
        if args.journal:
            from repository.journal_redis import open_log

            log: journal.ChangeLog = open_log(args.journal, args.model)
            where = log.key  # type: ignore[attr-defined]
        else:
            if args.repository is None:
                print("llmrec journal compact: --repository (the file journal) or --journal redis://... required",
                      file=sys.stderr)
                return 2
            path = args.repository / args.model / journal.JOURNAL
            if not path.is_file():
                print(f"llmrec journal compact: {path}: no such file", file=sys.stderr)
                return 2
            log, where = journal.FileLog(path), str(path)
        before, after = log.compact()
    except (OSError, ValueError) as exc:
        print(f"llmrec journal compact: {exc}", file=sys.stderr)
        return 1
    print(f"{where}: {before} records -> {after}")
    return 0
