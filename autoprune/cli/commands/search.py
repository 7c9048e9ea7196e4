"""``autoprune search``: learn per-group keep ratios for a budget (RL or random search), keep the best.

The pipeline is ``autoprune.experiments.search.run_search``; this command parses, calls and prints.
"""
from __future__ import annotations

from autoprune.config import add_config_args, resolve_resumable
from autoprune.experiments.search import HELP as FIELD_HELP
from autoprune.experiments.search import SearchConfig, SearchRun, run_search
from autoprune.train.scores import parse_score, score_label

NAME = "search"
HELP = "Search per-group pruning ratios for a MACs/params target with RL (DDPG/TD3/SAC) or random search."

_RESUMABLE_CHANGES = {"episodes", "progress", "device", "workers", "ray_address"}


def add_arguments(parser) -> None:
    add_config_args(parser, SearchConfig, FIELD_HELP)


def run(args) -> None:
    report(run_search(resolve_resumable(SearchConfig, args, _RESUMABLE_CHANGES)))


def report(run: SearchRun) -> None:
    s, metric = run.summary, run.summary["metric"]
    fmt, fmt_search = parse_score(s["score"]).format, parse_score(s["search_score"]).format
    for row in s["policy_at_targets"] or []:
        print(f"policy at {100 * row['target']:g}% of {metric}: {fmt_search(row['policy_score'])} "
              f"(uniform {fmt_search(row['uniform_score'])})")
    print(f"dense: {100 * run.dense_accuracy:.2f}% val accuracy, {s['dense_macs']:,} MACs at "
          f"{'x'.join(map(str, s['input_size']))}")
    print(f"best {s['agent']} allocation: {fmt(run.score)} at "
          f"{s['best']['macs']:,} MACs ({100 * s['best']['cost_ratio']:.1f}% of {metric})")
    if s["finalists"]:
        f = s["finalists"]
        rank = 1 + sorted(c["search_score_value"] for c in f["candidates"])[::-1].index(
            f["candidates"][0]["search_score_value"])
        seconds = sum(c["seconds"] for c in f["candidates"])
        heuristics = sum(bool(c.get("heuristic")) for c in f["candidates"])
        named = [c["candidate"] for c in f["candidates"] if c.get("candidate")]
        extra = ([f"the {heuristics} heuristic allocations the search started from"] if heuristics else []) + \
                ([f"--candidates {' '.join(named)}"] if named else [])
        parts = [f"the {f['k']} best by {s['search_score']}"] + extra
        which = (f"the {len(f['candidates'])} best by {s['search_score']}" if not extra else
                 f"{len(f['candidates'])} ({', '.join(parts[:-1])} and {parts[-1]})")
        print(f"finalists: {which} re-scored by {f['score']} in "
              f"{seconds:.0f} s; the pick "
              f"was #{rank} by {s['search_score']} ({fmt_search(f['candidates'][0]['search_score_value'])}; "
              f"the search's own pick: {fmt_search(f['search_pick']['score_value'])})")
    print(f"best_model.pt as loaded from disk: {100 * run.saved_model_accuracy:.2f}% plain accuracy on the same "
          "held-out images")
    print(f"uniform allocation:  {fmt(run.uniform_score)} at "
          f"{s['uniform']['macs']:,} MACs ({100 * s['uniform']['cost_ratio']:.1f}% of {metric})")
    if s["latency"] is not None:
        lat = s["latency"]
        print(f"best_model.pt latency (batch {lat['batch_size']}, {lat['precision']}): measured "
              f"{1e3 * lat['measured_seconds']:.2f} ms = {100 * lat['measured_ratio']:.1f}% of dense, "
              f"predicted {1e3 * lat['predicted_seconds']:.2f} ms")
    policy = s["policy"]
    if policy is not None:
        reward = run.search.policy_score
        score = (fmt_search(reward) if s["reward"] == "accuracy"
                 else f"reward {reward:.4f}")
        how = ("fitted onto the best episode, plays it" if policy["distilled"]
               else f"the best noise-free episode, {policy['episode']}")
        print(f"kept policy (policy.zip): {score} when rolled out without noise ({how})")
    share = s["evaluator_share"]
    # the search's episodes were scored by the search score (the finalists stage comes after them)
    where = (f"{100 * share:.0f}% in scoring ({score_label(s['search_score'])})" if share is not None
             else f"scored on {s['workers']} Ray workers")
    print(f"{s['episodes']} episodes, {s['seconds_per_episode']:.2f} s/episode ({where}); run saved in {run.run_dir}")
