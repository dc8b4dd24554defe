"""A new user's mistakes end in one line that says what was wrong and what is accepted, and a non-zero
exit code, never a traceback; a real bug keeps its traceback (LLMREC_DEBUG=1 shows it for the others)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import UserError
from llmrec import cli

ROOT = Path(__file__).resolve().parent.parent

# file name -> (content, the message's pattern after "<file>")
BAD_FILES = {
    "missing.csv": (None, r"data file not found: .*missing\.csv$"),
    "nonnum.csv": ("user,item,rating\n1,2,4\n1,3,abc\n", r"nonnum\.csv:3: bad rating 'abc'; expected a number$"),
    "nocol.csv": ("user,rating\n1,3\n", r"nocol\.csv:1: no item column in header \['user', 'rating'\]; "
                                        r"expected one of: item, item_id, "),
    "empty.csv": ("", r"empty\.csv:1: empty file; expected a header line naming the columns$"),
    "header.csv": ("user,item,rating\n", r"header\.csv: no interactions \(an empty file or a header line only\); "
                                         r"expected one interaction per line$"),
    "semicolon.csv": ("user;item;rating\n1;2;3\n", r"semicolon\.csv:1: header 'user;item;rating' looks separated by "
                                                   r"';', but the extension says comma-separated \(\.csv\); "
                                                   r"expected ',' between fields"),
    "tab.csv": ("user\titem\trating\n1\t2\t3\n", r"tab\.csv:1: header 'user\\titem\\trating' looks separated by "
                                                 r"'\\t', but the extension says comma-separated"),
    "ragged.csv": ("user,item,rating\n1,2,3\n1,2\n", r"ragged\.csv:3: expected 3 fields separated by ',' "
                                                     r"\(header \['user', 'item', 'rating'\]\), got 2$"),
    "log.json": ('{"user": 1, "item": 2}\n', r"log\.json: unsupported file type '\.json'; accepted: \.csv, \.tsv, "
                                             r"\.tab, \.txt \(each optionally \.gz\), \.parquet; review JSON lines "
                                             r"load with --data.dataset amazon$"),
}
DATA_COMMANDS = (["train", "tcf"], ["train", "cllm4rec"], ["eval", "baselines"])


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    """Runs `llmrec argv` in process: the exit code, and stderr's one line with the command as prefix."""
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("llmrec ")]
    assert len(lines) == 1, err
    words = " ".join(a for a in argv[:2] if not a.startswith("-"))
    assert lines[0].startswith(f"llmrec {words}: "), lines[0]
    return lines[0].split(": ", 1)[1]


@pytest.mark.parametrize("command", DATA_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_data_file_is_one_line(tmp_path, monkeypatch, capsys, command, name):
    import re

    content, pattern = BAD_FILES[name]
    if content is not None:
        (tmp_path / name).write_text(content)
    monkeypatch.chdir(tmp_path)  # nothing a failed run might write lands in the repository
    message = one_line_error(capsys, [*command, "--data.dataset", "interactions", "--data.path", name])
    assert re.search(pattern, message), message


def test_unreadable_bytes_are_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "latin1.csv").write_bytes(b"user,item\nJos\xe9,1\n")
    (tmp_path / "fake.parquet").write_text("user,item\n1,2\n")
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "baselines", "--data.dataset", "interactions", "--data.path"]
    assert one_line_error(capsys, [*argv, "latin1.csv"]).startswith(
        "latin1.csv:2: not UTF-8 text (invalid continuation byte); expected a UTF-8 file")
    assert one_line_error(capsys, [*argv, "fake.parquet"]).startswith("fake.parquet: not a readable Parquet file (")
    (tmp_path / "folder.csv").mkdir()
    assert one_line_error(capsys, [*argv, "folder.csv"]) == "folder.csv is a folder; expected a data file"


def test_a_spreadsheet_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    from models.data.config import DataConfig
    from models.data.loaders import load_data

    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffuser,item\nu1,i1\nu1,i2\n".encode())
    assert load_data(DataConfig(dataset="interactions", path=path)).summary()["users"] == 1


def _checkpoint_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{")
    other = tmp_path / "other-kind"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"kind": "something-else", "format_version": 2}))
    return {
        "missing": (tmp_path / "nope", r"checkpoint folder .*nope does not exist; expected a checkpoint folder "
                                       r"written by `llmrec train "),
        "corrupt": (corrupt, r"corrupt is not a readable checkpoint \(Expecting property name .*\); expected a "
                             r"checkpoint folder written by `llmrec train "),
        "other kind": (other, r"other-kind is not a readable checkpoint \(.*kind (is )?'something-else'.*\); expected"),
        "empty folder": (tmp_path, r"is not a readable checkpoint \(.*config\.json is missing\)"),
    }


@pytest.mark.parametrize("command", [["eval", "tcf"], ["eval", "cllm4rec"], ["export"]], ids=" ".join)
def test_bad_checkpoint_is_one_line(tmp_path, monkeypatch, capsys, command):
    import re

    monkeypatch.chdir(tmp_path)
    for folder, pattern in _checkpoint_cases(tmp_path).values():
        argv = [*command, "--checkpoint", str(folder)]
        if command == ["export"]:  # export's own exit code for a refused export is 1
            assert cli.main([*argv, "--repository", str(tmp_path / "repo"), "--name", "m"]) == 1
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and err.startswith("llmrec export: refused: "), err
            assert re.search(pattern, err), err
        else:
            message = one_line_error(capsys, argv)
            assert re.search(pattern, message), message
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("command", [["train", "tcf"], ["train", "cllm4rec"], ["eval", "baselines"],
                                     ["eval", "tcf"], ["bench", "grpc"]], ids=" ".join)
def test_bad_config_file_is_one_line(tmp_path, capsys, command):
    missing = tmp_path / "missing.toml"
    assert one_line_error(capsys, [*command, "--config", str(missing)]) == (
        f"config file not found: {missing}; expected a .json or .toml file (--config FILE)")
    broken = tmp_path / "broken.json"
    broken.write_text('{"threads": 2,')
    assert one_line_error(capsys, [*command, "--config", str(broken)]).startswith(
        f"{broken}: not valid JSON (Expecting property name")


def test_unknown_config_key_names_the_accepted_ones(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"data": {"pth": "x.csv"}}))
    assert one_line_error(capsys, ["train", "tcf", "--config", str(cfg)]) == (
        "unknown config key(s) for DataConfig: pth; accepted: dataset, path, items_path, item_template, min_rating, "
        "min_user_interactions, min_item_interactions, split_seed")


def test_bench_grpc_without_or_with_an_unknown_model(tmp_path, capsys):
    repo = tmp_path / "repo"
    for name in ("movies", "books"):
        (repo / name / "1").mkdir(parents=True)
    (repo / "not-a-model").mkdir()  # no version folder: not offered
    base = ["bench", "grpc", "--bench.repository", str(repo)]
    assert one_line_error(capsys, base) == f"--bench.model is required; models in {repo}: books, movies"
    assert one_line_error(capsys, [*base, "--bench.model", "music"]) == (
        f"no model 'music' with a version in the repository; models in {repo}: books, movies")
    assert one_line_error(capsys, ["bench", "grpc", "--bench.repository", str(tmp_path / "none"),
                                   "--bench.model", "movies"]).startswith(f"model repository {tmp_path / 'none'} "
                                                                          "does not exist")


def test_llmrec_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, monkeypatch, capsys):
    argv = ["eval", "baselines", "--data.dataset", "interactions", "--data.path", str(tmp_path / "x.csv")]
    monkeypatch.setenv("LLMREC_DEBUG", "1")
    with pytest.raises(UserError, match="data file not found"):
        cli.main(argv)
    monkeypatch.delenv("LLMREC_DEBUG")

    def buggy(argv: list[str]) -> int:
        raise KeyError("a bug")

    import models.baselines.cli as baselines_cli

    monkeypatch.setattr(baselines_cli, "eval_main", buggy)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(argv)


def test_a_real_process_exits_2_with_one_line_and_no_faiss_noise(tmp_path):
    """Through `python -m llmrec` as a user runs it, on a command that imports FAISS before failing."""
    env = {**os.environ, "RECSYS_LOG_LEVEL": "INFO"}
    env.pop("LLMREC_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "llmrec", "export", "--checkpoint", str(tmp_path / "nope"),
                           "--repository", str(tmp_path / "repo"), "--name", "m"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"llmrec export: refused: checkpoint folder {tmp_path / 'nope'} does not exist; "
                                   "expected a checkpoint folder written by `llmrec train cllm4rec|tcf`")
    proc = subprocess.run([sys.executable, "-m", "llmrec", "train", "tcf", "--data.dataset", "interactions",
                           "--data.path", "ratings.json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("llmrec train tcf: ratings.json: unsupported file type '.json'")


def test_faiss_loader_is_quiet_after_logs_setup():
    code = "from common import logs; logs.setup('INFO'); import faiss; faiss.IndexFlatIP(4)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "AVX" not in proc.stderr and "faiss" not in proc.stderr, proc.stderr


def test_a_wrong_encoder_or_backbone_folder_is_one_line(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    line = one_line_error(capsys, ["train", "tcf", "--text.encoder", missing, "--out", str(tmp_path / "ck")])
    assert f"text encoder {missing!r}: accepted are 'minilm', 'smollm2' or a local Hugging Face folder" in line
    line = one_line_error(capsys, ["train", "cllm4rec", "--backbone.path", missing, "--out", str(tmp_path / "ck")])
    assert f"backbone path {missing} is not a folder; give a local HF causal-LM folder" in line


def test_training_prints_no_hugging_face_loading_bars(tmp_path):
    """transformers draws a "Loading weights" bar at every model load (several per command); the CLI
    turns Hugging Face's bars off before it imports transformers."""
    import os
    import subprocess
    import sys

    from models import tiny

    lm = tiny.write_causal_lm(tmp_path / "lm")
    data = tiny.write_ml100k(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = subprocess.run([sys.executable, "-m", "llmrec", "train", "cllm4rec",
                           *tiny.cllm4rec_argv(lm, data, tmp_path / "ck"), "--train.epochs", "1"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Loading weights" not in done.stderr and "Loading weights" not in done.stdout
