"""The item journal's semantics on tiny repositories, without a gRPC server: per-item last-writer-wins
whatever the read boundaries (R1), edited items stay excluded for users who saw them (R2), a journal that
shrinks, is restored or compacted is never skipped (R3), a failed write is never seen (R4), deletions cost
no per-query growth (R5), the delta index grows by segments (R15). Rows refer to issue 29."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest
from repo_fixtures import test_config as serve_config
from repo_fixtures import write_tcf

from repository import journal
from repository.journal import Cursor, ItemChange
from repository.reader import load_files
from server.catalogue import Catalogue
from server.indexes.faiss_cpu import FaissCpu, FaissIndex
from server.item_journal import ModelJournal
from server.metrics import Metrics
from server.model_version import ModelVersion


def _version(repo: Path, name: str = "m", version: int = 1) -> ModelVersion:
    return ModelVersion.load(name, load_files(repo / name / str(version)), serve_config(repo))


class Replica:
    """One server's view: a journal reader and one loaded version."""

    def __init__(self, repo: Path, name: str = "m") -> None:
        self.journal = ModelJournal(repo / name / journal.JOURNAL, name, Metrics())
        self.mv = _version(repo, name)

    def read(self) -> None:
        self.journal.read_new()
        self.journal.sync(self.mv)

    def view(self) -> dict:
        """Everything a client can observe of the catalogue, by item id."""
        cat = self.mv.catalogue
        ids = set(cat.base.ids) | set(cat.delta_rows)
        out = {}
        for x in sorted(ids):
            row = cat.row(x)
            out[x] = (cat.hidden(row), cat.title(row), cat.vectors([row])[0].round(6).tobytes(), x in cat.deleted)
        q = np.ones(cat.dim, np.float32)
        out["_top"] = [cat.item_id(r) for r, _ in cat.search(q, 10, set())]
        return out


def _append(path: Path, changes: list[ItemChange], cursor: list[Cursor]) -> list[journal.JournalRecord]:
    others, new = journal.append(path, cursor[0], changes)
    cursor[0] = others.cursor
    return new


# ---- R1: last writer wins, whatever the poll boundaries ----
def test_delete_readd_delete_replays_to_the_same_state_on_every_replica(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m")
    path = tmp_path / "m" / journal.JOURNAL
    live, batched = Replica(tmp_path), Replica(tmp_path)
    rng = np.random.default_rng(0)
    cursor = [Cursor()]
    ops = [ItemChange("upsert", "x", "w1 w2", "X"), ItemChange("delete", "x"),
           ItemChange("upsert", "x", "w3 w4", ""), ItemChange("delete", "x"),
           ItemChange("upsert", "t1", "w5 w6", ""), ItemChange("delete", "t1"),
           ItemChange("upsert", "y", "w7", "Y"), ItemChange("upsert", "y", "w8 w9", ""),
           ItemChange("delete", "t2")]
    for _ in range(60):  # random operations on a few items
        x = str(rng.choice(["x", "y", "z", "t3", "t4"]))
        if rng.random() < 0.4:
            ops.append(ItemChange("delete", x))
        else:
            ops.append(ItemChange("upsert", x, f"w{rng.integers(1, 30)} w{rng.integers(1, 30)}",
                                  str(rng.choice(["", "A", "B"]))))
    for i, op in enumerate(ops):
        _append(path, [op], cursor)
        live.read()  # reads after every record
        if rng.random() < 0.3 or i in (1, 3):
            batched.read()  # reads several records at once
    batched.read()
    late = Replica(tmp_path)  # a restart: reads the whole journal at once
    late.read()
    assert live.view() == batched.view() == late.view()
    assert live.mv.applied_seq == batched.mv.applied_seq == late.mv.applied_seq == len(ops)


def test_an_item_added_then_deleted_stays_valid_in_histories_after_replay(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m")
    path = tmp_path / "m" / journal.JOURNAL
    cursor = [Cursor()]
    _append(path, [ItemChange("upsert", "x", "w1 w2", "Title X")], cursor)
    _append(path, [ItemChange("upsert", "x", "w1 w2 w3", "")], cursor)  # an empty title keeps "Title X"
    _append(path, [ItemChange("delete", "x")], cursor)
    r = Replica(tmp_path)
    r.read()  # both records in one read (a restart, a new version, a replica that polled late)
    cat = r.mv.catalogue
    row = cat.row("x")
    assert row is not None, "a history naming x must not get NOT_FOUND"
    assert cat.hidden(row) and "x" in cat.deleted and cat.title(row) == "Title X"


# ---- R2: an edited item stays excluded for the known users who have seen it ----
def test_edited_item_stays_excluded_for_users_who_saw_it(tmp_path: Path) -> None:
    model = write_tcf(tmp_path, name="m")
    from recsys.v1 import recommender_pb2 as pb
    from server import request_rules as rules

    r = Replica(tmp_path)
    seen = model.seen[0]
    item = model.item_ids[seen[0]]
    journal.append(r.journal.path, Cursor(), [ItemChange("upsert", item, "w1 w2 w3", "")])
    r.read()
    cat = r.mv.catalogue
    assert cat.row(item) >= len(cat.base.ids)  # moved to a delta row
    req = pb.RecommendRequest(model="m", user_id="u0", top_k=39)
    plan = rules.plan(req, r.mv, serve_config(tmp_path))
    assert cat.row(item) in plan.excluded
    hits = [cat.item_id(row) for row, _ in cat.search(r.mv.user_vector(0), 39, plan.excluded)]
    assert item not in hits


# ---- R3: a journal that no longer continues what was read is re-read whole, never skipped ----
def test_a_restored_journal_is_reread_and_no_sequence_number_is_reused(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m")
    path = tmp_path / "m" / journal.JOURNAL
    r = Replica(tmp_path)
    cursor = [Cursor()]
    _append(path, [ItemChange("upsert", "a", "w1", "")], cursor)
    backup = path.read_bytes()
    _append(path, [ItemChange("upsert", "b", "w2", ""), ItemChange("upsert", "c", "w3", "")], cursor)
    r.read()
    assert r.mv.applied_seq == 3
    path.write_bytes(backup)  # restored from a backup taken after record 1
    fresh = [Cursor()]  # a replica started after the restore appends first
    new = _append(path, [ItemChange("upsert", "d", "w4", "")], fresh)
    assert new[0].seq == 2  # it cannot know better...
    r.read()  # ...but the replica that read 1..3 sees the file does not continue them: it rebuilds
    cat = r.mv.catalogue
    assert cat.row("d") is not None, "the acknowledged record after the restore was skipped"
    assert cat.row("b") is None and cat.row("c") is None and r.journal.epoch == 1
    # and this replica never hands out a number it has seen: 4, not 3
    assert r.journal.append([ItemChange("upsert", "e", "w5", "")])[0].seq == 4


def test_a_compacted_journal_gives_the_same_catalogue_with_its_numbers_kept(tmp_path: Path) -> None:
    write_tcf(tmp_path, name="m")
    path = tmp_path / "m" / journal.JOURNAL
    r = Replica(tmp_path)
    cursor = [Cursor()]
    for i in range(5):
        _append(path, [ItemChange("upsert", "x", f"w{i + 1}", f"X{i}"), ItemChange("delete", "t1")], cursor)
    _append(path, [ItemChange("delete", "x"), ItemChange("upsert", "t1", "w9", "")], cursor)
    r.read()
    before = r.view()
    assert journal.compact(path) == (12, 3)  # x: its last upsert and its delete; t1: its upsert
    state, last = journal.read_state(path)
    assert last == 12 and state["x"].deleted and state["x"].text == "w5"
    r.read()
    assert r.journal.epoch == 1 and r.view() == before
    assert r.journal.append([ItemChange("upsert", "z", "w3", "")])[0].seq == 13
    r.journal.sync(r.mv)
    late = Replica(tmp_path)
    late.read()
    assert late.view() == r.view()


# ---- R4: a failed write is never seen by a reader ----
def test_a_reader_never_sees_a_record_whose_write_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / journal.JOURNAL
    journal.append(path, Cursor(), [ItemChange("upsert", "a", "x", "")])
    seen: list[list[str]] = []
    readers: list[threading.Thread] = []
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if os.fstat(fd).st_size > 0 and os.path.samestat(os.fstat(fd), os.stat(path)):
            monkeypatch.setattr(os, "fsync", real_fsync)
            reader = threading.Thread(target=lambda: seen.append(
                [r.item_id for r in journal.read_new(path).records]))
            reader.start()
            readers.append(reader)
            reader.join(0.5)  # without the shared lock it reads the ghost now; with it, it waits for us
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(journal.JournalError, match="No space left"):
        journal.append(path, Cursor(), [ItemChange("upsert", "ghost", "y", "")])
    readers[0].join(10)
    assert seen == [["a"]]
    _, new = journal.append(path, Cursor(), [ItemChange("upsert", "b", "z", "")])
    assert new[0].seq == 2 and [r.item_id for r in journal.read_new(path).records] == ["a", "b"]


# ---- R5: deletions cost no per-query growth ----
class CountingIndex(FaissIndex):
    depths: list[int]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.depths.append(k)
        return super().search(queries, k)


def test_search_depth_does_not_grow_with_the_number_of_deletions() -> None:
    n, dim = 5000, 8
    vecs = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    flat = faiss.IndexFlatIP(dim)
    flat.add(vecs)
    index = CountingIndex(flat, "faiss-cpu")
    index.depths = []
    cat = Catalogue.exported(index, [f"i{r}" for r in range(n)], vecs, [""] * n, FaissCpu.exact)
    cat, _, _ = cat.changed(deletes=[f"i{r}" for r in range(0, n, 3)])  # a third of the catalogue deleted
    q = np.random.default_rng(1).normal(size=dim).astype(np.float32)
    hits = cat.search(q, 10, set())
    assert len(hits) == 10 and all(r % 3 for r, _ in hits)
    assert max(index.depths) <= 4 * 10, index.depths  # not k + 1667


# ---- R15: a change indexes only what changed ----
def test_delta_changes_build_small_segments_not_the_whole_delta() -> None:
    n, dim = 50, 8
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    built: list[int] = []

    def exact(v: np.ndarray) -> FaissIndex:
        built.append(len(v))
        return FaissCpu.exact(v)

    flat = faiss.IndexFlatIP(dim)
    flat.add(vecs)
    cat = Catalogue.exported(FaissIndex(flat, "faiss-cpu"), [f"i{r}" for r in range(n)], vecs, [""] * n, exact)
    live = {f"i{r}": vecs[r] for r in range(n)}
    for j in range(256):
        v = rng.normal(size=dim).astype(np.float32)
        cat, _, _ = cat.changed([(f"n{j}", v, "")])
        live[f"n{j}"] = v
    assert sum(built) <= 256 * 10  # O(log m) re-indexing per item, not 1 + 2 + ... + 256 = 32896
    assert len(cat.segments) <= 9
    q = rng.normal(size=dim).astype(np.float32)
    got = [cat.item_id(r) for r, _ in cat.search(q, 20, set())]
    want = sorted(live, key=lambda x: -float(live[x] @ q))[:20]
    assert got == want
    assert np.array_equal(cat.vectors([cat.row("n100")])[0], live["n100"])


def test_llmrec_journal_compact_rewrites_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from llmrec.cli import main

    path = tmp_path / "m" / journal.JOURNAL
    journal.append(path, Cursor(), [ItemChange("upsert", "x", "a", ""), ItemChange("upsert", "x", "b", ""),
                                    ItemChange("delete", "x")])
    assert main(["journal", "compact", "--repository", str(tmp_path), "--model", "m"]) == 0
    assert "3 records -> 2" in capsys.readouterr().out
    assert [(r.seq, r.op) for r in journal.read_new(path).records] == [(2, "upsert"), (3, "delete")]
    assert main(["journal", "compact", "--repository", str(tmp_path), "--model", "nope"]) == 2
