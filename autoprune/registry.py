"""One registry for every named, pluggable thing: models, criteria, schedules, allocators.

``reg.register(name)`` (decorator, or with a target object plus preset keyword arguments),
``reg.names()``, ``reg.lookup(spec)`` (the registered object) and ``reg.build(spec, **kwargs)``
(call it). A spec may carry options, ``name@key=value,key=value`` (values are YAML:
``rates=[0.8,0.5]`` is a list), and a registry may take prefixed specs such as ``policy:PATH``
(``register_prefix``). A registry made with ``entry_point_group`` also lists the entry points of
installed packages in that group (``importlib.metadata``) on first use, and imports one only
when it is looked up: a plugin that fails to import breaks only its own name.
"""
from __future__ import annotations

import re
from importlib import metadata
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

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._prefixes: dict[str, tuple[Any, Callable[[str], dict[str, Any]], str]] = {}
        self._plugins: dict[str, metadata.EntryPoint] | None = None if entry_point_group else {}

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

    def plugins(self) -> dict[str, metadata.EntryPoint]:
        """The entry points of ``entry_point_group`` not yet imported (read once, on first use)."""
        if self._plugins is None:
            self._plugins = {}
            for ep in metadata.entry_points(group=self.entry_point_group):
                if ep.name in self._entries:
                    raise AutopruneError(f"{self.kind} plugin '{ep.name}' ({ep.value}) takes a built-in name: "
                                         "rename its entry point")
                self._plugins[ep.name] = ep
        return self._plugins

    def names(self) -> list[str]:
        return sorted({*self._entries, *self.plugins()}) + [usage for _, _, usage in self._prefixes.values()]

    def knows(self, spec: str) -> bool:
        name, _ = parse_spec(spec)
        return name in self._entries or name in self.plugins() or any(name.startswith(p) for p in self._prefixes)

    def check(self, spec: str) -> None:
        """Raise the one-line unknown-name error (before any expensive work)."""
        if not self.knows(spec):
            raise AutopruneError(f"unknown {self.kind} '{parse_spec(spec)[0]}': use one of {', '.join(self.names())}")

    def _entry(self, name: str) -> tuple[Any, dict[str, Any]]:
        """The target registered under ``name`` and its preset, importing a plugin on its first use."""
        plugins = self.plugins()
        if name not in self._entries and name in plugins:
            ep = plugins[name]
            try:
                target = ep.load()
            except Exception as exc:  # a plugin's own bug: name it, in one line
                reason = (str(exc).splitlines() or [""])[0]
                raise AutopruneError(f"{self.kind} plugin '{ep.name}' ({ep.value}) failed to load: "
                                     f"{type(exc).__name__}: {reason}") from None
            self._entries[name] = (target, {})
            del plugins[name]
        return self._entries[name]

    def lookup(self, spec: str) -> T:
        """The object a spec names (for a prefixed spec, the prefix's target); its options are ignored."""
        self.check(spec)
        name, _ = parse_spec(spec)
        for prefix, (target, _, _) in self._prefixes.items():
            if name.startswith(prefix):
                return target
        return self._entry(name)[0]

    def build(self, spec: str, **kwargs: Any) -> Any:
        """Call the target named by ``spec`` with its preset, the spec's options, then ``kwargs``."""
        self.check(spec)
        name, options = parse_spec(spec)
        for prefix, (target, parse, _) in self._prefixes.items():
            if name.startswith(prefix):
                return target(**{**parse(name[len(prefix):]), **options, **kwargs})
        target, preset = self._entry(name)
        return target(**{**preset, **options, **kwargs})
