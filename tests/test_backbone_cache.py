"""The de-quantized backbone cache when two trainings start at once: both convert, one folder wins."""
from __future__ import annotations

from pathlib import Path

import pytest

from models.cllm4rec.backbone import publish_folder


def _converted(root: Path, name: str, marker: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(marker)
    return folder


def test_the_second_of_two_conversions_keeps_the_first_and_drops_its_own(tmp_path: Path) -> None:
    target = tmp_path / "SmolLM2"
    publish_folder(_converted(tmp_path, "a.tmp", "first"), target)
    late = _converted(tmp_path, "b.tmp", "second")
    publish_folder(late, target)
    assert (target / "config.json").read_text() == "first"
    assert not late.exists()


def test_a_target_that_is_not_a_finished_folder_is_an_error_not_a_silent_drop(tmp_path: Path) -> None:
    target = tmp_path / "SmolLM2"
    target.mkdir()
    (target / "stray").write_text("x")  # a non-empty folder without config.json: refuse to guess
    with pytest.raises(OSError):
        publish_folder(_converted(tmp_path, "a.tmp", "first"), target)
