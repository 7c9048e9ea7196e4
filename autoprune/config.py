"""Run configs: dataclasses that round-trip to YAML, with every field a CLI flag.

Precedence: dataclass defaults < ``--config FILE.yaml`` < explicit flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import AutopruneError

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_args(parser: argparse.ArgumentParser, cls: type, help: dict[str, str] | None = None) -> None:
    """One flag per dataclass field (default None, so unset flags do not override the config file)."""
    parser.add_argument("--config", type=Path, help="YAML file with any of the options below")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        # unwrap Optional[X] / X | None only: list[float] must stay a list
        is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        typ = [a for a in typing.get_args(hint) if a is not type(None)][0] if is_union else hint
        desc = (help or {}).get(f.name, "")
        default = (f.default if f.default is not dataclasses.MISSING else
                   f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        text = f"{desc} (default: {default})" if desc else f"default: {default}"
        if typ is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typing.get_origin(typ) is list:
            item = typing.get_args(typ)[0]
            parser.add_argument(_flag(f.name), type=item, nargs="+", default=None, help=text)
        else:
            parser.add_argument(_flag(f.name), type=typ, default=None, help=text)


def resolve_config(cls: type[T], args: argparse.Namespace) -> T:
    """Defaults, then the YAML file, then explicit flags."""
    values: dict[str, Any] = {}
    path = getattr(args, "config", None)
    if path is not None:
        values.update(load_yaml(path))
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise AutopruneError(f"config file '{path}' has unknown keys {unknown}: valid keys are {sorted(names)}")
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in values]
    if missing:
        raise AutopruneError(f"missing required option(s): {', '.join(_flag(m) for m in missing)}")
    return cls(**values)


def load_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise AutopruneError(f"config file '{path}' not found") from None
    except yaml.YAMLError as exc:
        raise AutopruneError(f"config file '{path}' is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise AutopruneError(f"config file '{path}' must be a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in data.items()}


def save_config(config: object, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
