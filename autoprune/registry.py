"""One registry for every named, pluggable thing: models, criteria, schedules, allocators.

``reg.register(name)`` (decorator, or with a target: an object or a lazy ``"module:attr"``
string, plus preset keyword arguments), ``reg.names()``, ``reg.lookup(name)`` (the registered
object) and ``reg.build(spec, **kwargs)`` (call it). A spec may carry options,
``name@key=value,key=value`` (values are YAML: ``rates=[0.8,0.5]`` is a list), and a registry may
take prefixed specs such as ``policy:PATH`` (``register_prefix``).
"""
from __future__ import annotations

import importlib
import re
from typing import Any, Callable, Generic, TypeVar

import yaml

from autoprune.errors import AutopruneError

T = TypeVar("T")


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name@k=v,k=v`` -> (name, {k: v}); a spec without options -> (spec, {})."""
    name, sep, opts = spec.rpartition("@")
    if not sep or not re.match(r"\w+=", opts):
        return spec, {}
    try:
        kwargs = yaml.safe_load("{" + re.sub(r"(^|,)\s*(\w+)=", r"\1 \2: ", opts) + "}")
    except yaml.YAMLError:
        raise AutopruneError(f"cannot read the options of '{spec}': write NAME@key=value,key=value") from None
    return name, kwargs


class Registry(Generic[T]):
    """Named targets of one kind (``kind`` names it in errors)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._prefixes: dict[str, tuple[Any, Callable[[str], dict[str, Any]], str]] = {}

    def register(self, name: str, target: Any = None, **preset: Any) -> Any:
        """Register ``target`` under ``name`` (used as a decorator when ``target`` is omitted)."""
        if target is None:
            def wrap(obj: Any) -> Any:
                self._entries[name] = (obj, preset)
                return obj
            return wrap
        self._entries[name] = (target, preset)
        return target

    def register_prefix(self, prefix: str, target: Any, parse: Callable[[str], dict[str, Any]],
                        usage: str) -> None:
        """Specs ``prefix + VALUE`` build ``target(**parse(VALUE))``; ``usage`` (e.g. ``policy:PATH``) is listed."""
        self._prefixes[prefix] = (target, parse, usage)

    def names(self) -> list[str]:
        return sorted(self._entries) + [usage for _, _, usage in self._prefixes.values()]

    def knows(self, spec: str) -> bool:
        name, _ = parse_spec(spec)
        return name in self._entries or any(name.startswith(p) for p in self._prefixes)

    def check(self, spec: str) -> None:
        """Raise the one-line unknown-name error (before any expensive work)."""
        if not self.knows(spec):
            raise AutopruneError(f"unknown {self.kind} '{parse_spec(spec)[0]}': use one of {', '.join(self.names())}")

    def lookup(self, name: str) -> T:
        self.check(name)
        return _load(self._entries[name][0])

    def build(self, spec: str, **kwargs: Any) -> T:
        """Call the target named by ``spec`` with its preset, the spec's options, then ``kwargs``."""
        self.check(spec)
        name, options = parse_spec(spec)
        for prefix, (target, parse, _) in self._prefixes.items():
            if name.startswith(prefix):
                return _load(target)(**{**parse(name[len(prefix):]), **options, **kwargs})
        target, preset = self._entries[name]
        return _load(target)(**{**preset, **options, **kwargs})


def _load(target: Any) -> Any:
    """A ``"module:attr"`` string is imported on use (so a heuristic does not import SB3)."""
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return target
