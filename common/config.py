"""Typed configs: dataclasses with defaults, filled from a preset, a JSON/TOML file and then flags.

`parse(Cfg, argv)` accepts `--config FILE` anywhere in argv. Layers, each over the one before:
the dataclass defaults, the named preset (e.g. `--schedule short`, when the command has presets),
the file's values, then the flags given. tyro turns the dataclass into flags. Because a preset
only changes the defaults the flags start from, a flag always wins, even one whose value happens
to equal the dataclass default (`--train.batch-size 16` is 16, whatever the preset says).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import tyro

from common.errors import ConfigError

T = TypeVar("T")


def split_config_flag(argv: list[str]) -> tuple[Path | None, list[str]]:
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
    """Reads a config file: TOML for .toml, JSON otherwise; a table/object at the top."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; expected a .json or .toml file (--config FILE)")
    try:
        values = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        kind = "a TOML table" if path.suffix == ".toml" else "a JSON object"
        raise ConfigError(f"{path}: not valid {kind.split()[1]} ({exc}); expected {kind} of config values") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object of config values, got {type(values).__name__}")
    return values


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
        raise ConfigError(f"unknown config key(s) for {cls.__name__}: {', '.join(unknown)}; accepted: {', '.join(names)}")
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


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` / `--name=VALUE` in argv (the last one wins, as in tyro)."""
    flag, found = f"--{name.replace('_', '-')}", None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def _merged(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def parse(cls: type[T], argv: list[str], prog: str | None = None, description: str | None = None,
          presets: Mapping[str, Mapping[str, Any]] | None = None, preset_field: str = "schedule") -> T:
    """Config from the defaults, the preset named by `preset_field` (flag, file or default), the
    `--config FILE` values, then the flags (see the module docstring)."""
    path, rest = split_config_flag(argv)
    file_values = load_file(path) if path else {}
    if not presets:
        default = from_dict(cls, file_values) if path else None
        return tyro.cli(cls, args=rest, default=default, prog=prog, description=description)
    values = to_dict(cls())
    name = _flag_value(rest, preset_field) or file_values.get(preset_field) or values[preset_field]
    if name in presets:  # an unknown name is left to tyro, which lists the accepted ones
        values = _merged(values, {**presets[name], preset_field: name})
    default = from_dict(cls, _merged(values, file_values))
    return tyro.cli(cls, args=rest, default=default, prog=prog, description=description)
