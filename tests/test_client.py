"""The typed client and `llmrec recommend` against an in-process server."""

from __future__ import annotations

import json
import shutil
import subprocess

import grpc
import pytest
from repo_fixtures import running_server, write_cllm4rec, write_tcf

from client import RecommenderClient
from llmrec import client_cli


def test_client_cli_prints_rank_item_title_score(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_cllm4rec(tmp_path)
    with running_server(tmp_path) as (srv, client):
        target = f"127.0.0.1:{srv.port}"
        assert client_cli.recommend_main(["--target", target, "--model", "tiny-cllm", "--user", "u2", "--top-k", "4"]) == 0
        out = capsys.readouterr().out  # structlog may share stdout: start at the table's header
        lines = out[out.index("# tiny-cllm"):].strip().splitlines()
        assert lines[0] == "# tiny-cllm v1" and lines[1].split()[:3] == ["rank", "item_id", "score"]
        expected = model.top_k(model.user_vectors[2], 4)
        rows = [line.split() for line in lines[2:6]]
        assert [r[1] for r in rows] == expected and [r[0] for r in rows] == ["1", "2", "3", "4"]
        assert rows[0][3:] == ["Title", expected[0][1:]]  # "Title <row>"
        assert client_cli.recommend_main(["--target", target, "--model", "tiny-cllm", "--history", "i1,zz", "--top-k", "2",
                                "--allow-unknown-items"]) == 0
        assert "unknown items dropped: zz" in capsys.readouterr().out
        assert client_cli.recommend_main(["--target", target, "--model", "nope", "--user", "u1"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        assert client_cli.recommend_main(["--target", target, "--model", "tiny-cllm"]) == 2
        rec = client.recommend("tiny-cllm", user_id="u2", top_k=4, include_history=True)
        assert [i for i, _ in rec.items] == expected and rec.titles[0] == f"Title {expected[0][1:]}"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls(tmp_path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    repo = tmp_path / "repo"
    write_cllm4rec(repo)
    with running_server(repo, tls_cert=cert, tls_key=key) as (srv, _):
        with RecommenderClient(f"localhost:{srv.port}", tls_ca=cert) as secure:
            assert secure.recommend("tiny-cllm", user_id="u1", top_k=2).items
        with RecommenderClient(f"localhost:{srv.port}", timeout=2) as plain, pytest.raises(grpc.RpcError):
            plain.recommend("tiny-cllm", user_id="u1", top_k=2)


def test_admin_commands_and_json_output(tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    write_tcf(tmp_path)
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "tok")
    items = tmp_path / "items.csv"
    items.write_text("item_id,text,title\nn1,w1 w2 w3,New one\nn2,w4 w5,New two\nt0,w6 w7,\n")
    with running_server(tmp_path, admin_token="tok") as (srv, _):
        target = ["--target", f"127.0.0.1:{srv.port}"]
        assert client_cli.upsert_main([*target, "--model", "tiny-tcf", "--file", str(items), "--batch-size", "2"]) == 0
        assert "2 added, 1 replaced; 42 items now" in capsys.readouterr().out
        assert client_cli.delete_main([*target, "--model", "tiny-tcf", "--items", "n2,t1"]) == 0
        assert "2 deleted, 0 already deleted; 40 items recommendable" in capsys.readouterr().out
        assert client_cli.models_main([*target, "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)["models"][0]
        assert listed["name"] == "tiny-tcf" and int(listed["versions"][0]["deleted_items"]) == 2  # int64 is a JSON string
        assert client_cli.recommend_main([*target, "--model", "tiny-tcf", "--history", "n1", "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        ids = [x["item_id"] for x in answer["items"]]
        assert "n1" not in ids and "n2" not in ids and answer["request_id"]  # seen and deleted items left out
        assert client_cli.reload_main(target) == 0
        assert "serving: tiny-tcf:1" in capsys.readouterr().out
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"item_id": "x", "text": "w1"}\nnot json\n')
        assert client_cli.upsert_main([*target, "--model", "tiny-tcf", "--file", str(bad)]) == 2
        assert "bad.jsonl:2: expected a JSON object" in capsys.readouterr().err
        monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "wrong")
        assert client_cli.reload_main(target) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_request_ids_come_back_and_name_the_failure_in_the_log(tmp_path, capsys) -> None:
    write_cllm4rec(tmp_path)
    with running_server(tmp_path) as (srv, client):
        mine = client.recommend("tiny-cllm", user_id="u1", top_k=2, request_id="my-req-42")
        assert mine.request_id == "my-req-42"
        other = client.recommend("tiny-cllm", user_id="u1", top_k=2, request_id="bad id with spaces")
        assert other.request_id and other.request_id != "bad id with spaces"
        with srv.registry.use("tiny-cllm") as mv:
            b = mv.batcher
        original = b._run
        b._run = lambda payloads: 1 / 0
        try:
            with pytest.raises(grpc.RpcError) as info:
                client.recommend("tiny-cllm", history=["i1"], top_k=2, request_id="boom-1")
        finally:
            b._run = original
        assert "request_id boom-1" in info.value.details()
        assert dict(info.value.trailing_metadata())["x-request-id"] == "boom-1"
        assert "boom-1" in capsys.readouterr().err  # the server's error log line carries it
