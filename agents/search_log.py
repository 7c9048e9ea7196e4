"""The contract every search agent keeps: what it records per episode and what it returns.

``EpisodeLog`` writes ``episodes.csv``, TensorBoard scalars and ``best_allocation.json`` (one schema,
``write_best_allocation``); ``SearchResult`` is what ``search(problem, scorer, run_dir, resume,
progress)`` returns, for the learned agents and random search alike. Rows are flushed as they are
written; ``truncate(n)`` drops rows after episode ``n`` when a run resumes from a checkpoint taken
at episode ``n``, and keeps the earlier ones in ``rewards`` / ``noise`` so totals span resumes.
"""
from __future__ import annotations

import csv
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

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
        return cls(state["score"], state["episode"], None if keep is None else Allocation(keep), state["info"])


@dataclass
class SearchResult:
    """What a search returns: the best episode, totals over every session of the run, the kept policy."""

    best: Best
    episodes: int
    seconds: float
    eval_seconds: float
    rewards: list[float] = field(default_factory=list)  # per episode, every session of the run
    noise_free: list[int] = field(default_factory=list)  # episodes run without exploration noise
    policy_path: Path | None = None
    policy_score: float = -float("inf")  # the kept policy's noise-free episode reward
    policy_episode: int = -1
    bests: list[Best] | None = None  # per problem, for a multi-model search
    policy_distilled: bool = False  # the kept policy was fitted onto the best episode (and plays it)
    resumed_seconds: float = 0.0  # the part of ``seconds`` spent by earlier sessions (a resumed run)
    heuristics: list[Allocation] = field(default_factory=list)  # played first (sensitivity's, uniform's): finalists

    @property
    def allocation(self) -> Allocation:
        assert self.best.allocation is not None
        return self.best.allocation


def write_best_allocation(path: Path, allocation: Allocation, structure: ModelStructure, *, score: str,
                          score_value: float | None, episode: int | None = None, reward: float | None = None,
                          metric: str | None = None, target: float | None = None,
                          uniform_score_value: float | None = None) -> None:
    """``best_allocation.json``: keep counts plus one fixed set of fields (None where not known yet):
    ``score`` names the score (the ``--score`` value), ``score_value`` is the allocation's."""
    with atomic_path(path) as tmp:
        allocation.save(tmp, structure, score=score, score_value=score_value, episode=episode, reward=reward,
                        metric=metric, target=target, uniform_score_value=uniform_score_value)


@contextmanager
def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Iterator[Any]:
    """tqdm over episodes (a no-op bar when disabled), closed on the way out."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit="ep", dynamic_ncols=True, disable=not enabled)
    try:
        yield bar
    finally:
        bar.close()


def annotate_episodes(path: Path, structure: ModelStructure, scores: dict[tuple[int, ...], float],
                      column: str) -> int:
    """Add ``column`` to ``episodes.csv``: ``scores`` (keyed by keep counts) on the episodes that played
    those counts, empty elsewhere (e.g. the finalist score of the re-ranked candidates). Returns the
    number of rows annotated."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = [c for c in reader.fieldnames or [] if c != column] + [column], list(reader)
    hits = 0
    for r in rows:
        key = tuple(int(round(float(r[f"keep:{g.name}"]) * g.channels)) for g in structure.groups)
        r[column] = f"{scores[key]:.6f}" if key in scores else ""
        hits += key in scores
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)
    return hits


class EpisodeLog:
    """Appends one row per episode, mirrors it to TensorBoard, keeps ``best_allocation.json`` current."""

    def __init__(self, run_dir: str | Path | None, structure: ModelStructure, start_episode: int = 0,
                 score_kind: str = "adaptive-bn"):
        self.structure, self.score_kind = structure, score_kind
        self.rewards: list[float] = []
        self.noise_free: list[int] = []
        self.seconds = self.eval_seconds = 0.0
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
        self.resumed_seconds = self.seconds  # the kept rows' seconds: earlier sessions of a resumed run

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
            w = csv.DictWriter(f, self.columns, extrasaction="ignore")  # drops a finished run's finalist column
            w.writeheader()
            w.writerows(rows)
        for r in rows:
            self._remember(int(r["episode"]), float(r["reward"]), float(r["noise"]) if r["noise"] else None,
                           float(r["seconds"]), float(r["eval_seconds"]))
        self._file = self.csv_path.open("a", newline="")

    def record(self, episode: int, reward: float, info: dict[str, Any], noise: float | None = None,
               seconds: float = 0.0, eval_seconds: float = 0.0) -> bool:
        """Log one finished episode (``info`` from the env's last step); True if it is the new best."""
        alloc: Allocation = info["allocation"]
        ratios = alloc.ratios(self.structure)
        self._remember(episode, reward, noise, seconds, eval_seconds)
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

    def _remember(self, episode: int, reward: float, noise: float | None, seconds: float,
                  eval_seconds: float) -> None:
        self.rewards.append(float(reward))
        if noise == 0.0:
            self.noise_free.append(episode)
        self.seconds += seconds
        self.eval_seconds += eval_seconds

    def save_best(self) -> None:
        if self.run_dir is None or self.best.allocation is None:
            return
        info = self.best.info
        write_best_allocation(self.run_dir / "best_allocation.json", self.best.allocation, self.structure,
                              score=self.score_kind, score_value=info.get("accuracy"), episode=self.best.episode,
                              reward=info.get("reward"), target=info.get("target"))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
