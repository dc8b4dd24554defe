"""The typed client and `llmrec recommend` against an in-process server."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest
from repo_fixtures import running_server, write_cllm4rec

from server import client_cli
from server.client import RecommenderClient


def test_client_cli_prints_rank_item_title_score(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_cllm4rec(tmp_path)
    with running_server(tmp_path) as (srv, client):
        target = f"127.0.0.1:{srv.port}"
        assert client_cli.main(["--target", target, "--model", "tiny-cllm", "--user", "u2", "--top-k", "4"]) == 0
        out = capsys.readouterr().out  # structlog may share stdout: start at the table's header
        lines = out[out.index("# tiny-cllm"):].strip().splitlines()
        assert lines[0] == "# tiny-cllm v1" and lines[1].split()[:3] == ["rank", "item_id", "score"]
        expected = model.top_k(model.user_vectors[2], 4)
        rows = [line.split() for line in lines[2:6]]
        assert [r[1] for r in rows] == expected and [r[0] for r in rows] == ["1", "2", "3", "4"]
        assert rows[0][3:] == ["Title", expected[0][1:]]  # "Title <row>"
        assert client_cli.main(["--target", target, "--model", "tiny-cllm", "--history", "i1,zz", "--top-k", "2",
                                "--allow-unknown-items"]) == 0
        assert "unknown items dropped: zz" in capsys.readouterr().out
        assert client_cli.main(["--target", target, "--model", "nope", "--user", "u1"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        assert client_cli.main(["--target", target, "--model", "tiny-cllm"]) == 2
        rec = client.recommend("tiny-cllm", user_id="u2", top_k=4)
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
