"""Server settings: file < RECSYS_* environment < flags; bad values are refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.config import ServeConfig, load


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg_file = tmp_path / "serve.json"
    cfg_file.write_text(json.dumps({"port": 1, "max_top_k": 7, "pins": ["a:1"]}))
    env = {"RECSYS_PORT": "2", "RECSYS_ADMIN_TOKEN": "tok", "RECSYS_PINS": "m:2,n:3", "RECSYS_LOG_JSON": "1",
           "RECSYS_MAX_WAIT_MS": "5.5"}
    cfg = load(["--config", str(cfg_file), "--repository", "repo", "--max-batch-size", "4"], env)
    assert (cfg.port, cfg.max_top_k, cfg.admin_token, cfg.max_batch_size) == (2, 7, "tok", 4)
    assert cfg.pins == ("m:2", "n:3") and cfg.pinned() == {"m": {2}, "n": {3}}
    assert cfg.log_json and cfg.max_wait_ms == 5.5 and cfg.repository == Path("repo")
    assert load(["--port", "9"], env).port == 9


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="pin 'm' is not name:version"):
        ServeConfig(pins=("m",))
    with pytest.raises(ValueError, match="max_top_k must be >= 1"):
        ServeConfig(max_top_k=0)
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        ServeConfig(tls_cert=Path("c.pem"))
