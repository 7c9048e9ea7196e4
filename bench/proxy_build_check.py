"""Does the dense build a proxy-validity row was scored on move its score? Re-scores every row of a pool on
this machine's dense build and compares the rank correlation with the truth against the stored scores (which
may come from several builds: each score records ``dense_test_acc``).

    python -m bench.proxy_build_check --model resnet56 --target 0.3 --scores adaptive-bn reconstruct:loss
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from autoprune.runs import write_json_atomic

from .common import RESULTS, machine
from .proxy_validity import OUT, Bench, spearman


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--target", type=float, default=0.3)
    p.add_argument("--scores", nargs="+", default=["adaptive-bn", "reconstruct:loss"])
    args = p.parse_args(argv)
    record = json.loads(OUT.read_text())
    rows = [r for r in record["rows"] if r["model"] == args.model and r["target"] == args.target]
    bench = Bench(args.model, {"rows": []})
    build = bench.dense_build["test_acc"]
    path = RESULTS / f"proxy-build-check-{args.model}-{args.target:g}.json"
    out = json.loads(path.read_text()) if path.exists() else {
        "command": "python -m bench.proxy_build_check " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine(), "dense_test_acc": build, "rows": [], "spearman": {}}
    if out["dense_test_acc"] != build:
        raise SystemExit(f"{path} was scored on another dense build ({out['dense_test_acc']}): move it away to start over")
    done = {x["source"] for x in out["rows"]}
    for r in rows:
        if r["source"] in done:
            continue
        fresh = {"source": r["source"], "truth": r["test_acc"], "truth_dense_test_acc": r.get("dense_test_acc"),
                 "stored": {}, "rescored": {}}
        for s in args.scores:
            fresh["stored"][s] = {"value": r["scores"][s]["value"], "dense_test_acc": r["scores"][s].get("dense_test_acc")}
            copy = {"counts": r["counts"], "scores": {}}
            bench.add_scores(copy, (s,))
            fresh["rescored"][s] = copy["scores"][s]["value"]
        out["rows"].append(fresh)
        write_json_atomic(path, out, indent=1)  # resumable row by row
        print(r["source"], fresh["stored"], fresh["rescored"], flush=True)
    truth = [x["truth"] for x in out["rows"]]
    out["missing"] = [r["source"] for r in rows if r["source"] not in {x["source"] for x in out["rows"]}]
    for s in args.scores:
        out["spearman"][s] = {
            "stored": spearman([x["stored"][s]["value"] for x in out["rows"]], truth),
            "rescored_on_one_build": spearman([x["rescored"][s] for x in out["rows"]], truth)}
    print(json.dumps(out["spearman"], indent=1))
    write_json_atomic(path, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
