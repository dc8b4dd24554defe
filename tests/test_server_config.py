"""Server settings: file < RECSYS_* environment < flags; bad values are refused with the reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from server.config import ServeConfig, load


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg_file = tmp_path / "serve.json"
    cfg_file.write_text(json.dumps({"port": 1, "max_top_k": 7, "pins": ["a:1"]}))
    env = {"RECSYS_PORT": "2", "RECSYS_ADMIN_TOKEN": "tok", "RECSYS_PINS": "m:2,n:3", "RECSYS_LOG_JSON": "1",
           "RECSYS_MAX_WAIT_MS": "5.5"}
    cfg = load(["--config", str(cfg_file), "--repository", "repo", "--max-batch-size", "4"], env)
    assert (cfg.network.port, cfg.limits.max_top_k, cfg.admin_token, cfg.encoders.max_batch_size) == (2, 7, "tok", 4)
    assert cfg.reload.pins == ("m:2", "n:3") and cfg.reload.pinned() == {"m": {2}, "n": {3}}
    assert cfg.log_json and cfg.encoders.max_wait_ms == 5.5 and cfg.repository == Path("repo")
    assert load(["--port", "9"], env).network.port == 9


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="pin 'm' is not name:version"):
        ServeConfig.flat(pins=("m",))
    with pytest.raises(ValueError, match="max_top_k must be >= 1"):
        ServeConfig.flat(max_top_k=0)
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        ServeConfig.flat(tls_cert=Path("c.pem"))


def test_hardening_settings_from_env_and_flags(tmp_path: Path) -> None:
    env = {"RECSYS_REQUEST_LOG_SALT_FILE": str(tmp_path / "salt"), "RECSYS_MAX_MESSAGE_MB": "2.5",
           "RECSYS_ADMIN_THREADS": "3", "RECSYS_MAX_FAILED_RESTARTS": "0"}
    cfg = load(["--max-batch-ids", "100", "--restart-backoff-seconds", "0.5"], env)
    assert cfg.request_log.salt_file == tmp_path / "salt" and cfg.network.max_message_mb == 2.5
    assert (cfg.pools.admin_threads, cfg.watchdog.max_failed_restarts, cfg.limits.max_batch_ids) == (3, 0, 100)
    assert cfg.watchdog.backoff_seconds == 0.5
    with pytest.raises(ValueError, match="admin_threads must be >= 1"):
        ServeConfig.flat(admin_threads=0)
    with pytest.raises(ValueError, match="max_message_mb must be > 0"):
        ServeConfig.flat(max_message_mb=0)
    with pytest.raises(ValueError, match="read_queue_size must be >= 0"):
        ServeConfig.flat(read_queue_size=-1)


def test_sections_keep_every_flat_flag_and_environment_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from server.config import FLAT, setting

    with pytest.raises(SystemExit):
        load(["--help"], {})
    help_text = capsys.readouterr().out
    assert [flat for flat in FLAT if not re.search(rf"--{flat.replace('_', '-')}[ ,]", help_text)] == []
    assert setting(load([], {"RECSYS_ENCODER_STALL_SECONDS": "7.5"}), "encoder_stall_seconds") == 7.5
    nested, flat = tmp_path / "nested.json", tmp_path / "flat.toml"
    nested.write_text(json.dumps({"limits": {"max_top_k": 7}, "watchdog": {"stall_seconds": 3.0}, "port": 1}))
    flat.write_text("max_top_k = 7\nencoder_stall_seconds = 3.0\nport = 1\n")
    assert load(["--config", str(nested)], {}) == load(["--config", str(flat)], {})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"max_topk": 7}))
    with pytest.raises(ValueError, match="unknown server setting"):
        load(["--config", str(bad)], {})
