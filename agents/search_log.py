"""What a search run records per episode: ``episodes.csv``, TensorBoard scalars and the best so far.

Shared by the learned agents and random search so every run directory looks the same. Rows are
flushed as they are written; ``truncate(n)`` drops rows after episode ``n`` when a run resumes
from a checkpoint taken at episode ``n``.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune.core.allocation import Allocation
from autoprune.core.structure import ModelStructure
from autoprune.runs import atomic_path

BASE_COLUMNS = ["episode", "reward", "accuracy", "images", "partial", "macs", "params", "cost_ratio", "target",
                "noise", "seconds", "eval_seconds"]


@dataclass
class Best:
    """Best allocation seen so far (by accuracy, else by reward)."""

    score: float = -float("inf")
    episode: int = -1
    allocation: Allocation | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_state(self) -> dict:
        return {"score": self.score, "episode": self.episode, "info": self.info,
                "keep": None if self.allocation is None else dict(self.allocation.keep)}

    @classmethod
    def from_state(cls, state: dict) -> "Best":
        keep = state.get("keep")
        return cls(state["score"], state["episode"], None if keep is None else Allocation(keep), state.get("info", {}))


class EpisodeLog:
    """Appends one row per episode, mirrors it to TensorBoard, keeps ``best_allocation.json`` current."""

    def __init__(self, run_dir: str | Path | None, structure: ModelStructure, start_episode: int = 0):
        self.structure = structure
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.columns = BASE_COLUMNS + [f"keep:{g.name}" for g in structure.groups]
        self.best = Best()
        self._file = None
        self._writer = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.truncate(start_episode)
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_episode or None)

    @property
    def csv_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "episodes.csv"

    def truncate(self, episodes: int) -> None:
        """Keep only the first ``episodes`` rows (a resumed run redoes the rest) and reopen for appending."""
        rows: list[dict] = []
        if episodes and self.csv_path.exists():
            with self.csv_path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["episode"]) < episodes]
        with atomic_path(self.csv_path) as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            w.writeheader()
            w.writerows(rows)
        self._file = self.csv_path.open("a", newline="")

    def record(self, episode: int, reward: float, info: dict[str, Any], noise: float | None = None,
               seconds: float = 0.0, eval_seconds: float = 0.0) -> bool:
        """Log one finished episode (``info`` from the env's last step); True if it is the new best."""
        alloc: Allocation = info["allocation"]
        ratios = alloc.ratios(self.structure)
        acc = info.get("accuracy")
        scored = info.get("score")  # evaluator.Score: held-out images scored, stopped early or not
        row = {"episode": episode, "reward": f"{reward:.6f}", "accuracy": "" if acc is None else f"{acc:.6f}",
               "images": "" if scored is None else scored.images,
               "partial": "" if scored is None else int(scored.partial),
               "macs": info["macs"], "params": info["params"], "cost_ratio": f"{info['cost_ratio']:.6f}",
               "target": "" if info.get("target") is None else f"{info['target']:g}",
               "noise": "" if noise is None else f"{noise:.6f}", "seconds": f"{seconds:.3f}",
               "eval_seconds": f"{eval_seconds:.3f}"}
        row.update({f"keep:{g.name}": f"{r:.4f}" for g, r in zip(self.structure.groups, ratios)})
        if self._file is not None:
            csv.DictWriter(self._file, self.columns).writerow(row)
            self._file.flush()
        if self._writer is not None:
            w = self._writer
            w.add_scalar("episode/reward", reward, episode)
            if acc is not None:
                w.add_scalar("episode/accuracy", acc, episode)
            w.add_scalar("episode/macs", info["macs"], episode)
            w.add_scalar("episode/cost_ratio", info["cost_ratio"], episode)
            if noise is not None:
                w.add_scalar("episode/noise", noise, episode)
            for g, r in zip(self.structure.groups, ratios):
                w.add_scalar(f"keep/{g.name}", r, episode)
        score = float(acc) if acc is not None else float(reward)
        if score > self.best.score:
            self.best = Best(score, episode, alloc, {"accuracy": acc, "reward": float(reward), "macs": int(info["macs"]),
                                                      "params": int(info["params"]),
                                                      "cost_ratio": float(info["cost_ratio"]),
                                                      "target": info.get("target")})
            if self._writer is not None:
                self._writer.add_scalar("episode/best_score", score, episode)
            self.save_best()
            return True
        return False

    def save_best(self) -> None:
        if self.run_dir is None or self.best.allocation is None:
            return
        with atomic_path(self.run_dir / "best_allocation.json") as tmp:
            self.best.allocation.save(tmp, self.structure, episode=self.best.episode,
                                      adaptive_bn_accuracy=self.best.info.get("accuracy"),
                                      reward=self.best.info.get("reward"))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_episodes(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def episode_totals(rows: list[dict[str, str]]) -> tuple[int, float, float]:
    """(episodes, wall seconds, evaluator seconds) over ``episodes.csv`` rows: exact across resumes."""
    return len(rows), sum(float(r["seconds"]) for r in rows), sum(float(r["eval_seconds"]) for r in rows)
