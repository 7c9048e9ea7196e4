"""Which score predicts the model after fine-tuning, and at what cost per candidate?

Pools (L1 criterion, JPEG-adapted dense checkpoints of ``bench/base_models.py``): random feasible
allocations (seeded, the first 20 at 30% / 12 at 50% of MACs are the rows of the first version of
this benchmark) -- ResNet-20: 40 at 30% and 40 at 50% of MACs; ResNet-56: 24 at 30% -- plus the
``uniform``, ``layer-stats``, ``sensitivity``, ``searched`` and ``random`` allocations of the
final-quality grid (``bench/results/final-quality/allocations``) at the same model and target.

Every candidate gets every score of ``SCORES`` (``autoprune.train.scores``; 1,024 calibration
images, 2,000 held-out training images, seconds per candidate measured one score at a time) and
the ground truth: test accuracy (10,000 images, fp32) after 2 epochs of LR rewinding (cosine from
0.01, 48,000 training images, seed 0). The report gives, per model and target, each score's
Spearman and Kendall rank correlation with the truth (95% bootstrap intervals), the paired
bootstrap of its difference from ``adaptive-bn``, its seconds per candidate, and what choosing by
it takes home: the truth of the candidate it ranks first and the mean truth of its top 5.

    python -m bench.proxy_validity                      # resumable: each candidate's truth and each score
    python -m bench.proxy_validity --models resnet20    # one model's pools
    python -m bench.proxy_validity --targets 0.5        # one target's pools (runs beside another target's)
    python -m bench.proxy_validity --models resnet56 --part 1/2   # every 2nd candidate from the 2nd: two
                                                        # processes share one pool (rows merge under a lock)
    python -m bench.proxy_validity --scores-only        # add missing scores to existing rows, no fine-tunes
    python -m bench.proxy_validity --report             # correlations, table and plot from the rows only

Rows written by the first version (``truth_build: "v1"``) were fine-tuned on another machine (Intel
Xeon, bf16) from that machine's build of the dense checkpoint; their scores are computed here on this
machine's build. The report says how many rows of each kind a figure uses.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from autoprune.agents.random_search import random_feasible_counts
from autoprune.core.allocation import Allocation
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import Scorer
from autoprune.runs import write_json_atomic
from autoprune.train.evaluator import accuracy, recalibrate_bn
from autoprune.train.scores import DEFAULT_SCORE
from autoprune.train.training import TrainRecipe, train
from autoprune.workspace import open_workspace

from .base_models import DATA, finetuned_checkpoint
from .common import RESULTS, machine

OUT = RESULTS / "proxy-validity.json"
GRID = RESULTS / "final-quality" / "allocations"
POOLS = {("resnet20", 0.3): 40, ("resnet20", 0.5): 40, ("resnet56", 0.3): 24}
SCORES = ("adaptive-bn", "adaptive-bn:loss", "adaptive-bn:kd", "reconstruct", "reconstruct:loss",
          "finetune:10", "finetune:25", "finetune:50", "finetune:100",
          "finetune-kd:10", "finetune-kd:25", "finetune-kd:50", "finetune-kd:100")
# scored in this order over the pools: the ones that can stay within 3x adaptive-BN's cost first
TIERS = (("adaptive-bn", "adaptive-bn:loss", "adaptive-bn:kd", "reconstruct", "reconstruct:loss", "finetune:10",
          "finetune-kd:10"), ("finetune:25", "finetune-kd:25", "finetune:50", "finetune-kd:50"),
         ("finetune:100", "finetune-kd:100"))
assert sorted(sum(TIERS, ())) == sorted(SCORES)
BASELINE = "adaptive-bn"
TRUTH_EPOCHS = 2.0


# -- statistics -----------------------------------------------------------------------------
def _ranks(a) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    a = np.asarray(a, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a))
    for v in np.unique(a):
        tie = a == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a, b) -> float:
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall(a, b) -> float:
    """Kendall's tau-b."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    da, db = np.sign(a[:, None] - a[None, :]), np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    denom = np.sqrt((da != 0).sum() * (db != 0).sum())
    return float((da * db).sum() / denom) if denom else float("nan")


def bootstrap(scores: dict[str, np.ndarray], truth: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    """95% percentile intervals of each score's Spearman and Kendall, and of its Spearman minus the
    baseline's on the same resample (paired)."""
    rng = np.random.default_rng(seed)
    draws: dict[str, dict[str, list[float]]] = {s: {"spearman": [], "kendall": []} for s in scores}
    for _ in range(resamples):
        i = rng.integers(0, len(truth), len(truth))
        if len(set(truth[i])) < 3:
            continue
        for s, v in scores.items():
            draws[s]["spearman"].append(spearman(v[i], truth[i]))
            draws[s]["kendall"].append(kendall(v[i], truth[i]))

    def interval(values) -> list[float]:
        values = np.asarray(values)
        values = values[~np.isnan(values)]
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if len(values) else [None, None]

    out = {}
    for s in scores:
        out[s] = {"spearman_95": interval(draws[s]["spearman"]), "kendall_95": interval(draws[s]["kendall"])}
        if BASELINE in scores and s != BASELINE:
            out[s]["spearman_minus_baseline_95"] = interval(
                np.array(draws[s]["spearman"]) - np.array(draws[BASELINE]["spearman"]))
    return out


def summarize(rows: list[dict]) -> dict:
    """Per pool ("model@target"), each score over the rows that have it and their truth (``n`` says how many:
    a score still being added covers fewer rows), its paired comparison with adaptive BN on those rows."""
    out = {}
    for (model, target) in POOLS:
        pool = [r for r in rows if r["model"] == model and r["target"] == target and r.get("test_acc") is not None]
        table = {}
        for name in SCORES:
            sel = [r for r in pool if name in r["scores"] and BASELINE in r["scores"]]
            if len(sel) < 5:
                continue
            truth = np.array([r["test_acc"] for r in sel])
            values = {s: np.array([r["scores"][s]["value"] for r in sel]) for s in {name, BASELINE}}
            order = np.argsort(-values[name], kind="mergesort")
            table[name] = {"n": len(sel), "spearman": spearman(values[name], truth),
                           "kendall": kendall(values[name], truth), **bootstrap(values, truth)[name],
                           "seconds_per_candidate": float(np.median([r["scores"][name]["seconds"] for r in sel])),
                           "first_pick_test_acc": float(truth[order[0]]), "first_pick": sel[order[0]]["source"],
                           "top5_mean_test_acc": float(truth[order[:5]].mean())}
        if not table:
            continue
        truth = np.array([r["test_acc"] for r in pool])
        grid = {r["source"]: r["test_acc"] for r in pool if not r["source"].startswith("random#")}
        out[f"{model}@{target:g}"] = {
            "n": len(pool), "n_v1_truth": sum(r.get("truth_build") == "v1" for r in pool),
            "best_test_acc": float(truth.max()), "median_test_acc": float(np.median(truth)),
            "grid_test_acc": grid, "scores": table}
    return out


def truth_check(rows: list[dict], final_rows: list[dict]) -> dict:
    """Does the pools' 2-epoch truth rank allocations as the final-quality protocol does? For every grid allocation
    in a pool: its truth beside the mean test accuracy of its round-1 ``lr-rewind`` rows in ``final_rows``
    (8 epochs on ResNet-20, 4 on ResNet-56; a seeded arm's row of its own seed, a deterministic arm's over seeds)."""
    out = {}
    for (model, target) in POOLS:
        pairs = []
        for r in rows:
            if r["model"] != model or r["target"] != target or not r["source"].startswith("grid:") \
                    or r.get("test_acc") is None:
                continue
            arm, seed = r["source"][len("grid:"):].rsplit("_s", 1)
            final = [f["test_acc"] for f in final_rows
                     if f["model"] == model and f["target"] == target and f["arm"] == arm
                     and f["recipe"] == "lr-rewind" and f.get("round", 1) == 1
                     and (f["seed"] == int(seed) or arm not in ("searched", "random"))]
            if final:
                pairs.append({"source": r["source"], "truth": r["test_acc"], "final": float(np.mean(final)),
                              "final_rows": len(final)})
        if len(pairs) >= 5:
            truth, final = np.array([p["truth"] for p in pairs]), np.array([p["final"] for p in pairs])
            out[f"{model}@{target:g}"] = {"n": len(pairs), "spearman": spearman(truth, final),
                                          "spearman_95": bootstrap({"truth": truth}, final)["truth"]["spearman_95"],
                                          "pairs": pairs}
    return out


def expected_pick(values: np.ndarray, truth: np.ndarray, resamples: int = 2000, seed: int = 0,
                  final: np.ndarray | None = None, k: int = 1) -> float:
    """The mean truth of the candidate a selection takes home, over bootstrap resamples of the pool (a steadier
    figure than one pool's single pick): the best by ``values``, or with ``final``, the best by ``final`` among
    the top ``k`` by ``values`` (the finalists stage)."""
    rng = np.random.default_rng(seed)
    picks = []
    for _ in range(resamples):
        i = rng.integers(0, len(truth), len(truth))
        top = i[np.argsort(-values[i], kind="mergesort")[:k]]
        picks.append(truth[top[np.argmax(final[top])]] if final is not None else truth[top[0]])
    return float(np.mean(picks))


def selection(rows: list[dict], screen: str, finals: tuple[str, ...], ks: tuple[int, ...] = (3, 5, 10)) -> dict:
    """Per pool: the expected truth of the pick when selecting by ``screen`` alone, by each final score alone, and
    by ``screen`` then each final score on its top k (the finalists stage), with the finalists' added cost."""
    out = {}
    for (model, target) in POOLS:
        sel = [r for r in rows if r["model"] == model and r["target"] == target and r.get("test_acc") is not None
               and screen in r["scores"]]
        usable = [f for f in finals if sum(f in r["scores"] for r in sel) == len(sel)]
        if len(sel) < 10:
            continue
        truth = np.array([r["test_acc"] for r in sel])
        v = np.array([r["scores"][screen]["value"] for r in sel])
        pool = {"n": len(sel), "screen": screen, "by_screen": expected_pick(v, truth),
                "best_possible": float(truth.max()), "median": float(np.median(truth))}
        stages = []
        for f in usable:
            fv = np.array([r["scores"][f]["value"] for r in sel])
            pool[f"by {f}"] = expected_pick(fv, truth)
            for k in ks:
                pool[f"{screen} then {f} on top {k}"] = pick = expected_pick(v, truth, final=fv, k=k)
                stages.append({"final": f, "k": k, "pick": pick})
        pool["stages"] = stages
        out[f"{model}@{target:g}"] = pool
    return out


def finalist_choice(selection_by_pool: dict, seconds: dict) -> dict:
    """Per model, and over every pool of every model (``"all"``, when there are several: what the tool's one
    default is read from): each finalists stage's gain over the screen alone on each pool (points of the
    2-epoch truth), its added seconds per search (K x the final score's seconds per candidate on an idle core,
    ``seconds[model][score]``), and the stage to default to: the largest worst-pool gain per added minute among
    the stages that gain on every pool (``None``: no stage does, finalists stay off)."""
    models = sorted({p.split("@")[0] for p in selection_by_pool})
    out = {m: _choose({p: s for p, s in selection_by_pool.items() if p.split("@")[0] == m}, seconds) for m in models}
    if len(models) > 1:
        out["all"] = _choose(selection_by_pool, seconds)
    return out


def _choose(pools: dict, seconds: dict) -> dict:
    gains: dict[tuple[str, int], dict[str, float]] = {}
    for name, s in pools.items():
        for st in s.get("stages", []):
            gains.setdefault((st["final"], st["k"]), {})[name] = st["pick"] - s["by_screen"]
    stages = []
    for (final, k), g in gains.items():
        cost = {p: seconds.get(p.split("@")[0], {}).get(final) for p in g}
        if len(g) < len(pools) or None in cost.values():  # a pool without this stage, or its cost not measured
            continue
        added = {p: k * c for p, c in cost.items()}
        by_model = {p.split("@")[0]: a for p, a in added.items()}
        stages.append({"final": final, "k": k, "gains": g,
                       "added_seconds": by_model if len(by_model) > 1 else next(iter(by_model.values())),
                       "worst_gain_per_minute": min(100 * g[p] / (added[p] / 60) for p in g)})
    stages.sort(key=lambda st: -st["worst_gain_per_minute"])
    default = next((st for st in stages if min(st["gains"].values()) > 0), None)
    return {"pools": sorted(pools), "stages": stages, "default": default}


# -- the pools --------------------------------------------------------------------------------
def grid_files(model: str, target: float) -> dict[str, Path]:
    """The final-quality grid's saved allocations for a pool, by source name (e.g. ``grid:searched_s0``)."""
    return {f"grid:{path.stem.split('_', 2)[2]}": path for path in sorted(GRID.glob(f"{model}_t{target:g}_*.json"))}


def missing_work(record: dict) -> list[str]:
    """Per pool, what the run has still to do: random candidates, grid allocations, scores not on every row."""
    out = []
    for (model, target), n in POOLS.items():
        have = [r for r in record["rows"] if r["model"] == model and r["target"] == target]
        sources = {r["source"] for r in have}
        parts = []
        n_random = sum(s.startswith("random#") for s in sources)
        if n_random < n:
            parts.append(f"{n - n_random} of {n} random candidates")
        grid = [g.removeprefix("grid:") for g in grid_files(model, target) if g not in sources]
        if grid:
            parts.append("grid " + ", ".join(grid))
        unscored = {s: sum(s not in r["scores"] for r in have) for s in SCORES}
        if any(unscored.values()):
            parts.append("scores on fewer rows: " + ", ".join(f"{s} (missing on {k} of {len(have)})"
                                                            for s, k in unscored.items() if k))
        if parts:
            out.append(f"{model}@{target:g}: " + "; ".join(parts))
    return out


def pool_candidates(model: str, target: float, problem: PruningProblem, n: int) -> list[tuple[str, list[int]]]:
    """(source, keep counts): the final-quality grid's allocations (first: they are what selection is about),
    then the seeded random draws (the same sequence as the first version)."""
    cands = []
    for source, path in grid_files(model, target).items():
        alloc = Allocation.from_dict(json.loads(path.read_text()), problem.structure)
        cands.append((source, [int(c) for c in alloc.counts(problem.structure)]))
    rng = np.random.default_rng(0)
    return cands + [(f"random#{i}", [int(c) for c in random_feasible_counts(problem, rng)]) for i in range(n)]


def migrate(record: dict) -> None:
    """Rows of the first version: name their model, source and scores the current way."""
    names = {"abn": "adaptive-bn", "ft100": "finetune:100"}
    for r in record["rows"]:
        if "model" in r:
            continue
        r.update(model="resnet20", source=f"random#{r['index']}", truth_build="v1",
                 v1={k: r.pop(k) for k in ("abn", "plain", "abn_4x", "ft100") if k in r})
        r["scores"] = {}
        r["v1"]["note"] = f"scores of the first version ({', '.join(names)}), on that machine's dense build"


class Bench:
    def __init__(self, model: str, record: dict):
        self.model, self.record = model, record
        self.ckpt = finetuned_checkpoint(model)
        self.ws = open_workspace(model, str(self.ckpt), DATA, val_size=2000, calib_size=1024, precision="fp32")
        self.structure = self.ws.structure()
        self.calib = self.ws.calibration(128)
        self.test = self.ws.data.tensors("test")
        self.dense_build = json.loads(self.ckpt.with_suffix(".json").read_text())
        self.scorers: dict[str, Scorer] = {}

    def problem(self, target: float) -> PruningProblem:
        return PruningProblem(self.structure, target, calib_batches=self.calib)

    def scorer(self, score: str) -> Scorer:
        if score not in self.scorers:
            self.scorers[score] = self.ws.scorer(self.problem(0.5), score)
        return self.scorers[score]

    def add_scores(self, row: dict, scores: tuple[str, ...] = SCORES) -> bool:
        """The missing ``scores`` of ``row``; True if any was added."""
        alloc = Allocation.from_counts(self.structure, row["counts"])
        added = False
        for score in scores:
            if score in row["scores"]:
                continue
            t0 = time.perf_counter()
            value = self.scorer(score).value(alloc)
            row["scores"][score] = {"value": value, "seconds": time.perf_counter() - t0,
                                    "dense_test_acc": self.dense_build["test_acc"], "cpu": machine()["cpu"]}
            added = True
        return added

    def truth(self, target: float, counts: list[int]) -> dict:
        problem = self.problem(target)
        pruned = problem.pruned_model(Allocation.from_counts(self.structure, counts))
        recalibrate_bn(pruned, self.calib)
        result = train(pruned, self.ws.data, TrainRecipe(epochs=TRUTH_EPOCHS, lr=0.01), seed=0, progress=False,
                       precision=self.ws.precision)
        return {"test_acc": accuracy(pruned, *self.test), "finetune_seconds": result.seconds,
                "truth_precision": self.ws.precision.name, "truth_build": "v2",
                "dense_test_acc": self.dense_build["test_acc"], "cpu": machine()["cpu"]}


def _key(row: dict) -> tuple:
    return row["model"], row["target"], row["source"]


def save(record: dict, reports: bool = False) -> None:
    """Write ``record`` (with its summary and reports if ``reports``: 40 s of bootstrap) merged with the rows another process (``--targets``) wrote meanwhile: under a lock, a row
    on disk that this process lacks is adopted, and of two copies of a row the one with more scores is kept."""
    import fcntl

    with open(OUT.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if OUT.exists():
            disk = json.loads(OUT.read_text())
            if not reports:  # the figures on disk are the newest report's: a rows-only save keeps them
                record.update({k: disk[k] for k in ("summary", "selection", "selection_default", "finalist_choice",
                                                                 "truth_check")
                               if k in disk})
            mine = {_key(r): r for r in record["rows"]}
            for row in disk["rows"]:
                if "model" not in row:
                    continue
                have = mine.get(_key(row))
                if have is None:
                    record["rows"].append(row)
                elif len(row.get("scores", {})) > len(have.get("scores", {})):
                    record["rows"][record["rows"].index(have)] = row
        if reports:
            record["summary"] = summarize(record["rows"])
            record["selection"] = selection(record["rows"], BASELINE, tuple(s for s in SCORES if s != BASELINE))
            # the finalists stage as the search would run it: screened by today's default score
            record["selection_default"] = selection(record["rows"], DEFAULT_SCORE,
                                                    tuple(s for s in SCORES if s != DEFAULT_SCORE))
            seconds = {m: {name: c["median"] for name, c in scores.items()} for m, scores in score_costs().items()}
            record["finalist_choice"] = finalist_choice(record["selection_default"], seconds)
            final_quality = RESULTS / "final-quality.json"
            record["truth_check"] = truth_check(
                record["rows"], json.loads(final_quality.read_text())["rows"] if final_quality.exists() else [])
        write_json_atomic(OUT, record, indent=1)
    if reports:
        write_reports(record)


def in_part(position: int, part: tuple[int, int] | None) -> bool:
    """Whether the candidate at ``position`` of its pool's draw belongs to ``part`` (i, n): every n-th from i, so
    n processes share a pool without doing a candidate twice."""
    return part is None or position % part[1] == part[0]


def parse_part(text: str) -> tuple[int, int]:
    """``I/N`` -> (I, N), 0 <= I < N (argparse turns the ValueError into its one-line error)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part {text}: give I/N, e.g. 0/2 and 1/2 for two processes") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--part {text}: I must be in 0..N-1")
    return i, n


def run(models: list[str], scores_only: bool, targets: list[float] | None = None,
        part: tuple[int, int] | None = None) -> None:
    record = json.loads(OUT.read_text()) if OUT.exists() else {"rows": []}
    record.update(command="python -m bench.proxy_validity", machine=machine(), scores=list(SCORES))
    record.pop("spearman_with_finetuned_test_acc", None)  # the first version's summary: recomputed as "summary"
    migrate(record)
    for model in models:
        bench = Bench(model, record)
        pools = [(t, n) for (m, t), n in POOLS.items() if m == model and (not targets or t in targets)]
        draws = {target: pool_candidates(model, target, bench.problem(target), n) for target, n in pools}
        for tier, scores in enumerate(TIERS):
            for target, n in pools:  # rows that have their truth: add this tier's scores
                position = {source: i for i, (source, _) in enumerate(draws[target])}
                for row in [r for r in record["rows"] if r["model"] == model and r["target"] == target
                            and in_part(position.get(r["source"], 0), part)]:
                    if bench.add_scores(row, scores):
                        save(record)
                        print(f"{model}@{target:g} {row['source']}: tier {tier + 1} scores added", flush=True)
            if scores_only or tier > 0:
                continue
            for target, n in pools:  # then new candidates: truth and the first tier
                rows = {r["source"]: r for r in record["rows"] if r["model"] == model and r["target"] == target}
                for i, (source, counts) in enumerate(draws[target]):
                    if not in_part(i, part):
                        continue
                    if source in rows:
                        if rows[source]["counts"] != counts:
                            raise SystemExit(f"{model}@{target:g} {source}: stored counts differ from the draw")
                        continue
                    t0 = time.perf_counter()
                    row = {"model": model, "target": target, "source": source, "counts": counts,
                           "macs_ratio": bench.structure.macs(counts) / bench.structure.dense_macs, "scores": {}}
                    row.update(bench.truth(target, counts))
                    bench.add_scores(row, scores)
                    row["seconds"] = time.perf_counter() - t0
                    record["rows"].append(row)
                    save(record)
                    print(f"{model}@{target:g} {source}: test {100 * row['test_acc']:.2f}% adaptive-bn "
                          f"{100 * row['scores']['adaptive-bn']['value']:.2f}% ({row['seconds']:.0f} s)", flush=True)


# -- the report --------------------------------------------------------------------------------
def score_costs() -> dict:
    """{model: {score: {median, x_adaptive_bn, ...}}}: seconds per candidate on an idle core (``bench.score_cost``)."""
    cost_file = RESULTS / "score-cost.json"
    return ({m: v["seconds"] for m, v in json.loads(cost_file.read_text()).get("models", {}).items()}
            if cost_file.exists() else {})


def _seconds(added: float | dict) -> str:
    """Added seconds per search: one figure, or one per model."""
    return f"{added:.0f}" if not isinstance(added, dict) else ", ".join(f"{m} {v:.0f}" for m, v in sorted(added.items()))


def report(record: dict) -> str:
    costs = score_costs()
    lines = ["# Proxy validity: which score predicts the fine-tuned model", "",
             f"Rerun: `{record['command']}` (resumable). Truth: test accuracy after {TRUTH_EPOCHS:g} epochs of LR "
             "rewinding. Rank correlations over each pool (random feasible allocations plus the final-quality "
             "grid's), 95% bootstrap intervals; `- abn` is the paired interval of the Spearman difference from "
             "adaptive-BN; cost: seconds per candidate relative to adaptive-BN's, measured on an idle core "
             "(`bench/results/score-cost.json`: the seconds in the rows were taken on a busy machine); "
             "first pick / top 5: the truth of the candidate the score ranks first / the mean of its top 5.", ""]
    for pool, s in record.get("summary", {}).items():
        lines += [f"## {pool}: {s['n']} candidates ({s['n_v1_truth']} with first-version truth), best "
                  f"{100 * s['best_test_acc']:.2f}%, median {100 * s['median_test_acc']:.2f}%", "",
                  "| score | n | Spearman [95%] | Kendall [95%] | - abn [95%] | cost x abn | first pick | top 5 |",
                  "|---|---|---|---|---|---|---|---|"]

        def iv(v):
            return "n/a" if v[0] is None else f"[{v[0]:.2f}, {v[1]:.2f}]"

        for name, t in s["scores"].items():
            diff = iv(t["spearman_minus_baseline_95"]) if "spearman_minus_baseline_95" in t else ""
            model = pool.split("@")[0]
            cost = costs.get(model, {}).get(name, {}).get("x_adaptive_bn")
            lines.append(f"| {name} | {t['n']} | {t['spearman']:.2f} {iv(t['spearman_95'])} | {t['kendall']:.2f} "
                         f"{iv(t['kendall_95'])} | {diff} | {'' if cost is None else f'{cost:.1f}'} | "
                         f"{100 * t['first_pick_test_acc']:.2f} | {100 * t['top5_mean_test_acc']:.2f} |")
        if s["grid_test_acc"]:
            lines += ["", "Grid allocations in this pool (truth): " + ", ".join(
                f"{k[5:]} {100 * v:.2f}" for k, v in sorted(s["grid_test_acc"].items()))]
        lines.append("")
    check = record.get("truth_check", {})
    if check:
        lines += ["## Is the 2-epoch truth the final-quality ranking?", "",
                  "The grid allocations in each pool: their truth here beside their mean test accuracy after the "
                  "final-quality protocol's LR rewinding (`final-quality.json`, round 1: 8 epochs on ResNet-20, 4 on "
                  "ResNet-56). Spearman over the allocations, 95% bootstrap interval (few allocations: wide).", "",
                  "| pool | n | Spearman [95%] |", "|---|---|---|"]
        lines += [f"| {pool} | {c['n']} | {c['spearman']:.2f} [{c['spearman_95'][0]:.2f}, {c['spearman_95'][1]:.2f}] |"
                  if c["spearman_95"][0] is not None else f"| {pool} | {c['n']} | {c['spearman']:.2f} |"
                  for pool, c in check.items()]
        lines.append("")
    for pool, sel in [*record.get("selection", {}).items(), *record.get("selection_default", {}).items()]:
        lines += [f"## Selection, {pool}, screened by {sel['screen']}: what each way of choosing takes home ({sel['n']} candidates)", "",
                  "Mean test accuracy after the 2-epoch fine-tune of the picked candidate over 2,000 bootstrap "
                  f"resamples of the pool (best possible {100 * sel['best_possible']:.2f}, median "
                  f"{100 * sel['median']:.2f}).", "", "| selection | expected pick % |", "|---|---|",
                  f"| by {sel['screen']} | {100 * sel['by_screen']:.2f} |"]
        lines += [f"| {k} | {100 * v:.2f} |" for k, v in sel.items() if k.startswith("by ") or " then " in k]
        lines.append("")
    for model, choice in record.get("finalist_choice", {}).items():
        if not choice["stages"]:
            continue
        pools = choice["pools"]
        title = "every model (the tool's default)" if model == "all" else model
        lines += [f"## Finalists stage, {title}: gain per added minute (screened by {DEFAULT_SCORE})", "",
                  "Gain: the expected pick's truth minus the screen's alone (points); added: K x the final score's "
                  "seconds per candidate on an idle core; the rule: the largest worst-pool gain per added minute "
                  "among stages that gain on every pool.", "",
                  "| final score | K | " + " | ".join(f"gain {p}" for p in pools) + " | added s | worst gain / min |",
                  "|---|---|" + "---|" * len(pools) + "---|---|"]
        for st in choice["stages"]:
            lines.append(f"| {st['final']} | {st['k']} | " + " | ".join(f"{100 * st['gains'][p]:+.2f}" for p in pools)
                         + f" | {_seconds(st['added_seconds'])} | {st['worst_gain_per_minute']:+.3f} |")
        d = choice["default"]
        lines += ["", f"By this rule: top {d['k']} re-scored by {d['final']}." if d else
                  "By this rule: no stage gains on every pool, so the finalists stage stays off.", ""]
    missing = missing_work(record)
    if missing:
        lines += ["Missing rows (the run continues where it stopped): " + "; ".join(missing) + ".", ""]
    return "\n".join(lines)


def plot(record: dict, path: Path, names: tuple[str, ...] = ("adaptive-bn", "reconstruct", "finetune:10",
                                                              "finetune-kd:10", "finetune:100")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = list(record.get("summary", {}))
    if not pools:
        return
    fig, axes = plt.subplots(len(pools), len(names), figsize=(3.2 * len(names), 3.0 * len(pools)), squeeze=False)
    for i, pool in enumerate(pools):
        model, target = pool.split("@")
        sel = [r for r in record["rows"] if r["model"] == model and r["target"] == float(target)
               and r.get("test_acc") is not None]
        for j, name in enumerate(names):
            ax = axes[i][j]
            pts = [(r["scores"][name]["value"], r["test_acc"]) for r in sel if name in r["scores"]]
            if pts:
                x, y = zip(*pts)
                ax.scatter(x, [100 * v for v in y], s=10, alpha=0.7)
                ax.set_title(f"{pool} {name}\nrho {spearman(x, y):.2f}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[i][0].set_ylabel("test % after 2-epoch LR rewind", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_reports(record: dict) -> None:
    (RESULTS / "proxy-validity.md").write_text(report(record) + "\n")
    plot(record, RESULTS / "proxy-validity.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=sorted({m for m, _ in POOLS}))
    parser.add_argument("--targets", nargs="+", type=float,
                        help="only these pools' targets (two processes may fill different targets at once)")
    parser.add_argument("--part", type=parse_part, metavar="I/N",
                        help="only every N-th candidate from the I-th (0-based): N processes share a pool")
    parser.add_argument("--scores-only", action="store_true")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    if not args.report:
        run(args.models, args.scores_only, args.targets, args.part)
    record = json.loads(OUT.read_text())
    migrate(record)
    save(record, reports=True)
    print(report(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
