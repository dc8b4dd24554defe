"""The data formats a new user reads about (README, `--help`) are the ones the loaders accept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmrec import cli
from models.data import loaders

ROOT = Path(__file__).resolve().parent.parent
COLUMN_NAMES = (loaders.USER_COLUMNS, loaders.ITEM_COLUMNS, loaders.TIME_COLUMNS, loaders.RATING_COLUMNS,
                loaders.TITLE_COLUMNS, loaders.TEXT_COLUMNS)


def _own_data_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index("## Using your own data"):readme.index("## Training")]


def test_readme_names_every_accepted_column_and_file_type():
    section = _own_data_section()
    for names in COLUMN_NAMES:
        for name in names:
            assert f"`{name}`" in section, name
    for suffix in loaders.SEPARATORS:
        assert f"`{suffix}`" in section, suffix
    assert "`.parquet`" in section


def test_readme_items_example_is_what_the_loader_builds(tmp_path):
    section = _own_data_section()
    table = re.search(r"```\n(item,title,year,genres\n.*?)```", section, re.S).group(1)
    text = re.search(r"gives item `1` the text `([^`]+)` and the title\s+`([^`]+)`", section)
    path = tmp_path / "items.csv"
    path.write_text(table)
    texts, titles = loaders.load_item_text(path)
    assert (texts["1"], titles["1"]) == (text.group(1), text.group(2))


@pytest.mark.parametrize("command", [["train", "tcf"], ["train", "cllm4rec"], ["eval", "baselines"]], ids=" ".join)
def test_help_documents_the_items_file(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # one column of boxes: lines join back into sentences
    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    out = " ".join(re.sub("[│╭╮╰╯─]", " ", capsys.readouterr().out).split())  # the help's sentences, unwrapped
    for names in COLUMN_NAMES:
        assert ", ".join(names) in out, names
    assert '"column: value" for every other non-empty column' in out
    assert "Items in it without interactions are left out (logged)" in out
