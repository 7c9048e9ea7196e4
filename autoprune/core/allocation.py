"""``Allocation``: how many channels each prunable group keeps. JSON round-trip."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from autoprune.core.counts import snap_count
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError


@dataclass(frozen=True)
class Allocation:
    """Channels kept per group, in the structure's group order (keyed by group name in JSON)."""

    keep: dict[str, int]

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def dense(cls, structure: ModelStructure) -> "Allocation":
        return cls({g.name: g.channels for g in structure.groups})

    @classmethod
    def from_counts(cls, structure: ModelStructure, counts: Sequence[int], round_to: int = 1) -> "Allocation":
        if len(counts) != len(structure.groups):
            raise ValueError(f"expected {len(structure.groups)} counts, got {len(counts)}")
        return cls({g.name: snap_count(g, float(k), round_to) for g, k in zip(structure.groups, counts)})

    @classmethod
    def from_ratios(cls, structure: ModelStructure, ratios: Sequence[float], round_to: int = 1) -> "Allocation":
        """Keep ``ratio * channels`` per group, snapped to legal counts (>= 1 channel)."""
        return cls.from_counts(structure, [r * g.channels for r, g in zip(ratios, structure.groups)], round_to)

    @classmethod
    def uniform(cls, structure: ModelStructure, ratio: float, round_to: int = 1) -> "Allocation":
        return cls.from_ratios(structure, [ratio] * len(structure.groups), round_to)

    # -- views -------------------------------------------------------------------------------
    def counts(self, structure: ModelStructure) -> np.ndarray:
        missing = [g.name for g in structure.groups if g.name not in self.keep]
        if missing or len(self.keep) != len(structure.groups):
            extra = sorted(set(self.keep) - {g.name for g in structure.groups})
            raise AutopruneError(
                f"allocation does not fit this model: missing groups {missing[:3]}, unknown groups {extra[:3]}"
            )
        out = np.array([self.keep[g.name] for g in structure.groups], dtype=np.int64)
        bad = [g.name for g, k in zip(structure.groups, out) if not 1 <= k <= g.channels]
        if bad:
            raise AutopruneError(f"allocation keeps an impossible number of channels in {bad[:3]}")
        return out

    def ratios(self, structure: ModelStructure) -> np.ndarray:
        return self.counts(structure) / structure.channels

    def macs(self, structure: ModelStructure) -> int:
        return structure.macs(self.counts(structure))

    def params(self, structure: ModelStructure) -> int:
        return structure.params(self.counts(structure))

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self, structure: ModelStructure | None = None, **extra: object) -> dict:
        groups: dict[str, dict] = {name: {"keep": int(k)} for name, k in self.keep.items()}
        out: dict = {"format": "autoprune.allocation/1"}
        if structure is not None:
            counts = self.counts(structure)
            for g, k in zip(structure.groups, counts):
                groups[g.name].update(channels=g.channels, ratio=round(float(k) / g.channels, 6))
            out.update(macs=self.macs(structure), params=self.params(structure),
                       macs_ratio=round(self.macs(structure) / structure.dense_macs, 6),
                       dense_macs=structure.dense_macs, dense_params=structure.dense_params)
        out.update(extra)
        out["groups"] = groups
        return out

    def save(self, path: str | Path, structure: ModelStructure | None = None, **extra: object) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(structure, **extra), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict, structure: ModelStructure | None = None) -> "Allocation":
        """Read ``{"groups": {name: {"keep": k} or {"ratio": r}}}``; ratios need ``structure``."""
        groups = data.get("groups") if isinstance(data, dict) else None
        if not isinstance(groups, dict) or not groups:
            raise AutopruneError("allocation file has no 'groups' table: was it written by autoprune?")
        keep: dict[str, int] = {}
        by_name = {g.name: g for g in structure.groups} if structure is not None else {}
        for name, entry in groups.items():
            if isinstance(entry, dict) and "keep" in entry:
                keep[name] = int(entry["keep"])
            elif isinstance(entry, dict) and "ratio" in entry and name in by_name:
                keep[name] = snap_count(by_name[name], float(entry["ratio"]) * by_name[name].channels)
            else:
                raise AutopruneError(f"allocation entry for group '{name}' needs 'keep' or 'ratio'")
        return cls(keep)

    @classmethod
    def load(cls, path: str | Path, structure: ModelStructure | None = None) -> "Allocation":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise AutopruneError(f"allocation file '{path}' not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise AutopruneError(f"allocation file '{path}' is not valid JSON") from None
        return cls.from_dict(data, structure)
