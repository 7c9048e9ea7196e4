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

from autoprune.errors import AutopruneError

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(X, optional) for ``X | None`` / ``Optional[X]``; other hints (``list[float]``) unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_config_args(parser: argparse.ArgumentParser, cls: type, help: dict[str, str] | None = None) -> None:
    """One flag per dataclass field (default None, so unset flags do not override the config file).

    Each flag's help states its default once (``(required)`` when there is none); the parser must
    not add its own (no ``ArgumentDefaultsHelpFormatter``).
    """
    parser.add_argument("--config", type=Path, help="YAML file with any of the options below")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ, _ = _unwrap(hints[f.name])
        desc = (help or {}).get(f.name, "").replace("%", "%%")  # argparse formats help with %
        default = _default(f)
        tail = "(required)" if default is dataclasses.MISSING else f"(default: {default})"
        text = f"{desc} {tail}" if desc else tail
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
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        check_type(key, value, hints[key], f"config file '{path}'")
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in values]
    if missing:
        raise AutopruneError(f"missing required option(s): {', '.join(_flag(m) for m in missing)}")
    return cls(**values)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))


def check_type(key: str, value: Any, hint: Any, where: str) -> None:
    """A one-line error naming ``key`` when ``value`` (from YAML) does not fit the field's type."""
    typ, optional = _unwrap(hint)
    if value is None and optional:
        return
    if typing.get_origin(typ) is list:
        item = typing.get_args(typ)[0]
        ok = isinstance(value, list) and all(_fits(v, item) for v in value)
    else:
        ok = _fits(value, typ)
    if not ok:
        raise AutopruneError(f"{where}: key '{key}' must be {_type_name(typ)}"
                             f"{' or null' if optional else ''}, got {value!r}")


def _fits(value: Any, typ: Any) -> bool:
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ in (str, bool):
        return isinstance(value, typ)
    return True  # other types (nested configs) are checked by their own constructors


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
