"""Typed configs: dataclasses with defaults, filled from a JSON/TOML file and then from flags.

`parse(Cfg, argv)` accepts `--config FILE` anywhere in argv; the file's values become the
defaults and explicit flags override them. tyro turns the dataclass into flags.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

import tyro

T = TypeVar("T")


def _split_config_flag(argv: list[str]) -> tuple[Path | None, list[str]]:
    rest: list[str] = []
    path: Path | None = None
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            path = Path(argv[i + 1])
            next(it, None)
        elif arg.startswith("--config="):
            path = Path(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return path, rest


def load_file(path: Path) -> dict[str, Any]:
    """Reads a config file; JSON or TOML by extension."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix == ".toml":
        return tomllib.loads(text)
    return json.loads(text)


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass type named by an annotation (also inside `X | None`), if any."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    return next((a for a in typing.get_args(tp) if isinstance(a, type) and dataclasses.is_dataclass(a)), None)


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Builds a (possibly nested) dataclass from a dict, refusing unknown keys by name."""
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown config key(s) for {cls.__name__}: {', '.join(unknown)}; accepted: {', '.join(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        ftype = _dataclass_in(hints[key])
        if isinstance(value, dict) and ftype is not None:
            kwargs[key] = from_dict(ftype, value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value) if typing.get_origin(hints[key]) is tuple else value
        elif isinstance(value, str) and Path in (*typing.get_args(hints[key]), hints[key]):
            kwargs[key] = Path(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a config (Paths become strings)."""

    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        return v

    return conv(dataclasses.asdict(cfg))


def parse(cls: type[T], argv: list[str], prog: str | None = None, description: str | None = None) -> T:
    """Config from `--config FILE` (optional) overridden by flags."""
    path, rest = _split_config_flag(argv)
    default = from_dict(cls, load_file(path)) if path else None
    return tyro.cli(cls, args=rest, default=default, prog=prog, description=description)
