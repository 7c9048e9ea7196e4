"""Benchmark grids split across processes: parts are disjoint and together give every missing row."""
import pytest

from bench.final_quality import _key, _key_r2, main, planned_rows, planned_rows_r2, report, rows_to_run


def test_final_quality_seed_and_recipe_parts_cover_the_missing_rows():
    models = ["resnet20", "resnet56"]
    done = {_key(*p) for p in planned_rows(models)[:31]}
    missing = rows_to_run(models, done)
    assert len(missing) == len(planned_rows(models)) - 31 and not {_key(*p) for p in missing} & done
    parts = [rows_to_run(models, done, seeds=[0]), rows_to_run(models, done, seeds=[1, 2])]
    assert sorted(parts[0] + parts[1]) == sorted(missing) and not set(parts[0]) & set(parts[1])
    scratch = rows_to_run(models, done, recipes=["scratch-B"])
    assert scratch and all(p[1] == "scratch-B" for p in scratch)
    assert {p[4] for p in scratch} == {"searched", "uniform"}
    by_target = [rows_to_run(models, done, targets=[0.5]), rows_to_run(models, done, targets=[0.3])]
    assert sorted(by_target[0] + by_target[1]) == sorted(missing) and {p[3] for p in by_target[0]} == {0.5}


def test_round_two_parts_by_arm_cover_its_missing_rows_once():
    models = ["resnet56"]
    done = {_key_r2(*p) for p in planned_rows_r2(models)[:5]}
    missing = rows_to_run(models, done, round=2)
    assert len(missing) == len(planned_rows_r2(models)) - 5 and not {_key_r2(*p) for p in missing} & done
    kd = rows_to_run(models, done, recipes=["lr-rewind-kd"], round=2)
    assert kd and {(p[1], p[4]) for p in kd} == {("lr-rewind-kd", "searched"), ("lr-rewind-kd", "sensitivity")}
    parts = [rows_to_run(models, done, arms=["universal", "tp-global"], round=2),
             rows_to_run(models, done, arms=["searched", "random", "sensitivity", "uniform", "searched-universal"],
                         round=2)]
    assert sorted(parts[0] + parts[1]) == sorted(missing) and {p[4] for p in parts[0]} == {"universal", "tp-global"}
    with pytest.raises(SystemExit) as e:
        main(["--round", "2", "--arms", "ppo"])
    assert e.value.code == 2


def test_final_quality_refuses_a_seed_outside_the_protocol(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--models", "resnet56", "--seeds", "2"])  # ResNet-56 runs seeds 0 and 1 only
    assert e.value.code == 2 and "--seeds [2] are not in the protocol" in capsys.readouterr().err


def _row(model: str, arm: str, test_acc: float, dense_test_acc: float | None) -> dict:
    return {"model": model, "recipe": "lr-rewind", "seed": 0, "target": 0.3, "arm": arm, "test_acc": test_acc,
            "proxy_acc": 0.3, "epochs": 4, "macs_ratio": 0.3, "train_gmacs": 1.0, "seconds": 1.0,
            "dense_test_acc": dense_test_acc}


def test_final_quality_report_measures_drops_from_the_build_the_rows_started_from():
    one_build = {"command": "x", "rows": [_row("resnet56", "uniform", 0.80, 0.8869)]}
    text = report(one_build, ["resnet56"])
    assert "dense test accuracy 88.69%" in text and "| 8.69 |" in text  # drop from that build, not the record
    two_builds = {"command": "x", "rows": [_row("resnet56", "uniform", 0.80, 0.8869),
                                           _row("resnet56", "searched", 0.81, None)]}
    assert "more than one build" in report(two_builds, ["resnet56"]) and "Machines" not in text
    two_builds["rows"][0]["cpu"] = "B"  # rows from two machines: their seconds are not comparable, say so
    assert "1 rows on B" in report(two_builds, ["resnet56"]).split("Machines: ")[1].split("\n")[0]


def test_final_quality_report_lists_an_arms_seeds_in_order():
    rows = [{**_row("resnet56", "uniform", 0.80, 0.8869), "seed": s} for s in (1, 0)]
    assert "| 0,1 |" in report({"command": "x", "rows": rows}, ["resnet56"])


def _scratch_row(arm: str, seed: int, acc: float, tmacs: float, target: float = 0.3) -> dict:
    return {"arm": arm, "target": target, "seed": seed, "test_acc": acc, "macs_ratio": target,
            "train_macs": tmacs * 1e12, "seconds": 10.0, "decision_epoch": 6.0 if arm.startswith("prog") else None}


def test_progressive_scratch_report_states_the_goals_paired_by_seed():
    from autoprune.train.training import TrainRecipe
    from bench.progressive_scratch import ARMS, images_seen, markdown, parse_args, rerun_command, widen_to_grid

    assert images_seen(1000, TrainRecipe(epochs=2.5, batch_size=128)) == 2 * 1000 + 4 * 128  # 8 steps per epoch
    assert images_seen(1000, TrainRecipe(epochs=1, batch_size=128)) == 1000  # the short last batch
    rows = [_scratch_row("pipeline", 0, 0.80, 10.0), _scratch_row("pipeline", 1, 0.81, 10.0),
            _scratch_row("progressive-searched", 0, 0.79, 5.0), _scratch_row("progressive-searched", 1, 0.81, 6.0),
            _scratch_row("progressive-uniform", 0, 0.78, 5.0)]
    record = {"command": "x", "protocol": {"epochs": 40.0, "seeds": [0, 1], "targets": [0.3]}, "dense": {},
              "rows": rows}
    text = markdown(record)
    assert "progressive-searched − pipeline: -0.50 ± 0.71 (n=2, not resolved) points at 0.55x" in text
    assert "progressive-searched − progressive-uniform: +1.00 ± 0.00 (n=1, not resolved)" in text
    assert "| progressive-searched | 0,1 | 80.00 ± 1.41 |" in text and "| 0.55 |" in text
    assert f"5 of {2 * len(ARMS)} (arm|target|seed)" in text and "Smoke run" not in text
    quick = {**record, "command": "python -m bench.progressive_scratch --quick",
             "protocol": {**record["protocol"], "epochs": 1.0, "train_subset": 1024}}
    assert "**Smoke run** (`--quick`: 1 epoch on 1,024 images)" in markdown(quick)
    args = parse_args(["--decide-at", "auto", "--epochs", "20"])
    command = rerun_command(args, "scratch-B", 0.3, 1)
    assert "--epochs=20.0" in command and "--decide-at=auto" in command and "--lr" not in command
    assert command.endswith("--arms scratch-B --targets 0.3 --seeds 1")
    # a process running part of the grid still plans, and lists as missing, all of it
    part = {"command": "x", "protocol": {"seeds": [0], "targets": [0.5]}}
    widen_to_grid(part, parse_args(["--seeds", "0", "--targets", "0.5", "--arms", "pipeline"]))
    assert part["protocol"] == {"seeds": [0, 1], "targets": [0.5, 0.3]}
    assert part["command"] == "python -m bench.progressive_scratch"


def test_agent_vs_sensitivity_report_checks_both_goals_on_every_cell():
    from bench.agent_vs_sensitivity import goals, report

    def row(seed, best, policy, action="sensitivity"):
        return {"model": "resnet20", "target": 0.3, "seed": seed, "agent": "ddpg", "action": action, "best": best,
                "random_best": 0.30, "sensitivity": 0.31, "policy": policy, "uniform": 0.25}

    won = [row(0, 0.318, 0.316), row(1, 0.316, 0.310)]  # mean best 31.7: +0.7 over sensitivity's 31.0
    lost = [row(0, 0.312, 0.312, "wall"), row(1, 0.314, 0.300, "wall")]  # +0.3; policy 0.7 below best
    g = goals(won)
    assert g["beats"] and g["policy_ok"] and round(100 * g["margin"], 2) == 0.7
    assert not goals(lost)["beats"] and not goals(lost)["policy_ok"]
    text = report({"command": "x", "evaluations": 200, "warmup_episodes": 30, "rows": won + lost})
    cells = [line for line in text.splitlines() if line.startswith("| resnet20")]
    assert len(cells) == 2 and "| met | " in cells[0] and cells[1].count("missed") == 2
    # a loss score: the goals are checked in the top-1 of the same allocations, not in loss units
    loss = [{**r, **{k: -1.0 - r[k] for k in ("best", "random_best", "sensitivity", "policy", "uniform")},
             **{f"{k}_top1": r[k] for k in ("best", "random_best", "sensitivity", "policy", "uniform")}} for r in won]
    assert goals(loss) == goals(won)


def test_agent_vs_sensitivity_save_keeps_rows_another_process_wrote(tmp_path):
    import json

    from bench.agent_vs_sensitivity import save

    def row(model):
        return {"model": model, "target": 0.3, "seed": 0, "agent": "ddpg", "action": "sensitivity", "best": 0.3,
                "random_best": 0.3, "sensitivity": 0.3, "policy": 0.3, "uniform": 0.2}

    out = tmp_path / "grid.json"
    base = {"command": "x", "evaluations": 200, "warmup_episodes": 30, "tables": {}, "cells": []}
    save({**base, "rows": [row("resnet56")]}, out)  # the other process
    mine = {**base, "rows": [row("resnet20")], "tables": {"resnet20": {}}}
    save(mine, out)
    assert sorted(r["model"] for r in json.loads(out.read_text())["rows"]) == ["resnet20", "resnet56"]
    assert out.with_suffix(".md").exists()


def test_final_quality_save_keeps_rows_another_process_wrote(tmp_path, monkeypatch):
    import json

    import bench.final_quality as fq

    monkeypatch.setattr(fq, "OUT", tmp_path / "final-quality.json")

    def row(seed, acc):
        return {"round": 2, "start": "recalibrated", "model": "resnet20", "recipe": "lr-rewind", "seed": seed,
                "target": 0.3, "arm": "searched", "test_acc": acc, "settings": fq.round2_settings()}

    fq.save({"command": "x", "rows": [row(1, 0.81)]})  # the other process (--seeds 1)
    mine = {"command": "y", "rows": [row(0, 0.82)]}
    fq.save(mine)
    fq.save(mine)  # a row is adopted once, and this process's own copy of a row is kept
    rows = json.loads(fq.OUT.read_text())["rows"]
    assert sorted((r["seed"], r["test_acc"]) for r in rows) == [(0, 0.82), (1, 0.81)]


def test_progressive_scratch_processes_on_different_seeds_share_the_file(tmp_path, monkeypatch):
    import json

    import bench.progressive_scratch as ps
    from bench.progressive_scratch import Bench, parse_args

    monkeypatch.setattr(ps, "markdown", lambda record: "")  # the report needs whole rows; this is about the merge
    args = parse_args(["--out", str(tmp_path / "p.json")])
    first, second = Bench(args), Bench(args)  # both started before either wrote
    for bench, seed in ((first, 0), (second, 1)):
        bench.record["dense"][str(seed)] = {"test_acc": 0.9}
        bench.record["rows"].append({"arm": "pipeline", "target": 0.3, "seed": seed, "test_acc": 0.8})
        bench.save()
    saved = json.loads(args.out.read_text())
    assert sorted(r["seed"] for r in saved["rows"]) == [0, 1] and sorted(saved["dense"]) == ["0", "1"]


def test_final_quality_round2_reports_paired_intervals_and_the_distillation_gain():
    from bench.final_quality import paired_interval, planned_rows_r2, round2_settings

    def r2(arm: str, seed: int, acc: float, recipe: str = "lr-rewind", settings: dict | None = None) -> dict:
        return {**_row("resnet20", arm, acc, 0.91), "round": 2, "seed": seed, "recipe": recipe, "score_value": acc,
                "alloc_seconds": 5.0, "settings": settings or round2_settings()}

    rows = [r2("searched", s, a) for s, a in ((0, 0.82), (1, 0.83), (2, 0.84))]
    rows += [r2("uniform", s, a) for s, a in ((0, 0.80), (1, 0.80), (2, 0.81))]
    rows += [r2("searched", s, a, "lr-rewind-kd") for s, a in ((0, 0.83), (1, 0.84))]
    rows += [r2("sensitivity", 0, 0.825, "lr-rewind-kd")]
    m, lo, hi, n = paired_interval(rows, "searched", "uniform")
    assert n == 3 and m == pytest.approx(2 + 2 / 3) and lo < m < hi  # 2, 3, 3 points
    text = report({"command": "x", "rows": rows}, ["resnet20"])
    assert "## resnet20, 30% of MACs (round 2)" in text and "uniform +2.67 [" in text
    assert "Distillation gain (lr-rewind-kd minus lr-rewind): searched +1.00 [+1.00, +1.00] (n=2)" in text
    assert "both distilled (lr-rewind-kd): sensitivity +0.50 (n=1: no interval)" in text
    assert "## Rows still missing (round 1)" in text  # round-2 rows never count as round-1 rows
    assert f"{len(planned_rows_r2(['resnet20'])) - len(rows)} of {len(planned_rows_r2(['resnet20']))}" in text
    # a row fine-tuned from the refitted start is reported beside its recalibrated twin, never in the arm table
    refitted = {**r2("searched", 0, 0.81), "start": "refitted"}
    text = report({"command": "x", "rows": [*rows, refitted]}, ["resnet20"])
    assert "| resnet20 | 30% | searched | 0 | 81.00 | 82.00 | +1.00 |" in text and "uniform +2.67 [" in text
    # a searched row picked under an earlier default (no finalists stage) is kept apart: the seed is still missing
    before = {k: v for k, v in round2_settings().items() if k != "heuristic_finalists"}  # rows before it existed
    earlier = r2("searched", 2, 0.90, settings={**before, "finalists": 0, "action": "sensitivity"})
    record = {"command": "x", "rows": [*rows[:2], *rows[3:], earlier]}
    text = report(record, ["resnet20"])
    assert "| resnet20 | 30% | searched | lr-rewind | 2 | none | sensitivity | 90.00 |" in text and "uniform +2.50 [" in text
    assert "resnet20|lr-rewind|2|0.3|searched|r2|top" in text.split("## Rows still missing (round 2)")[1]
    # so is one searched with the finalists stage but another action (rows before the action was recorded ran
    # `sensitivity`); a random row, which has no action, stays current
    settings = {k: v for k, v in before.items() if k != "action"}
    assert round2_settings()["action"] != "sensitivity"
    other = [r2("searched", 2, 0.70, settings=settings), r2("uniform", 2, 0.81, settings=settings)]
    text = report({"command": "x", "rows": [*rows[:2], *rows[3:], *other]}, ["resnet20"])
    assert "| resnet20 | 30% | searched | lr-rewind | 2 | top3-finetune:50 | sensitivity | 70.00 |" in text
    assert "uniform +2.50 [" in text and "uniform | lr-rewind | 2 |" not in text
    # and one picked by today's search and finalists but without the search's starting points among them
    text = report({"command": "x", "rows": [*rows[:2], *rows[3:], r2("searched", 2, 0.71, settings=before)]},
                  ["resnet20"])
    assert "| resnet20 | 30% | searched | lr-rewind | 2 | top3-finetune:50 | relative | 71.00 |" in text


def test_proxy_validity_finalists_rule_takes_the_best_worst_pool_gain_per_minute():
    import numpy as np

    from bench.proxy_validity import finalist_choice, selection

    rng = np.random.default_rng(0)
    rows = []
    for target in (0.3, 0.5):  # the screen ranks the truth backwards; "good" ranks it exactly
        for i in range(12):
            truth = 0.7 + 0.01 * i
            rows.append({"model": "resnet20", "target": target, "source": f"random#{i}", "test_acc": truth,
                         "scores": {"screen": {"value": -truth + 1e-4 * rng.random()}, "good": {"value": truth},
                                    "same": {"value": -truth}}})
    sel = selection(rows, "screen", ("good", "same"), ks=(3, 10))
    assert set(sel) == {"resnet20@0.3", "resnet20@0.5"}
    stages = {(st["final"], st["k"]): st["pick"] for st in sel["resnet20@0.3"]["stages"]}
    assert stages[("good", 10)] > stages[("good", 3)] > sel["resnet20@0.3"]["by_screen"]  # more finalists, better pick
    choice = finalist_choice(sel, {"resnet20": {"good": 6.0, "same": 1.0}})["resnet20"]
    d = choice["default"]
    gain = {k: st["pick"] - sel["resnet20@0.3"]["by_screen"] for k, st in
            ((st["k"], st) for st in sel["resnet20@0.3"]["stages"] if st["final"] == "good")}
    # "same" re-ranks as the screen does: no gain, never the default however cheap
    assert d["final"] == "good" and d["k"] == (3 if gain[3] / 3 > gain[10] / 10 else 10)
    assert d["added_seconds"] == 6.0 * d["k"]
    assert [st["worst_gain_per_minute"] for st in choice["stages"]] == sorted(
        (st["worst_gain_per_minute"] for st in choice["stages"]), reverse=True)
    # a stage that loses on one pool is never the default; none gains everywhere: the stage stays off
    sel["resnet20@0.5"]["stages"] = [{**st, "pick": sel["resnet20@0.5"]["by_screen"] - 0.01}
                                     for st in sel["resnet20@0.5"]["stages"]]
    assert finalist_choice(sel, {"resnet20": {"good": 6.0, "same": 1.0}})["resnet20"]["default"] is None
    # the tool's one default is read over every model's pools: a stage must gain on each of them
    sel56 = selection([{**r, "model": "resnet56"} for r in rows if r["target"] == 0.3], "screen", ("good", "same"),
                      ks=(3, 10))
    both = finalist_choice({"resnet20@0.3": sel["resnet20@0.3"], **sel56},
                           {"resnet20": {"good": 6.0, "same": 1.0}, "resnet56": {"good": 18.0, "same": 3.0}})
    assert both["resnet56"]["default"]["final"] == "good" and both["all"]["default"]["final"] == "good"
    st = both["all"]["default"]
    assert st["added_seconds"] == {"resnet20": 6.0 * st["k"], "resnet56": 18.0 * st["k"]}
    assert st["worst_gain_per_minute"] == pytest.approx(100 * st["gains"]["resnet56@0.3"] / (18.0 * st["k"] / 60))
    both = finalist_choice({**sel, **sel56}, {"resnet20": {"good": 6.0, "same": 1.0},
                                              "resnet56": {"good": 18.0, "same": 3.0}})
    assert both["resnet56"]["default"] is not None and both["all"]["default"] is None  # resnet20@0.5 loses


def test_proxy_validity_parts_share_a_pool_without_overlap(capsys):
    from bench.proxy_validity import in_part, main

    parts = [[i for i in range(29) if in_part(i, (k, 3))] for k in range(3)]
    assert sorted(sum(parts, [])) == list(range(29)) and {len(p) for p in parts} == {9, 10}
    assert all(in_part(i, None) for i in range(29))
    for bad in ("2/2", "1", "a/b"):
        with pytest.raises(SystemExit):
            main(["--part", bad, "--report"])
        assert "error: argument --part: --part" in capsys.readouterr().err.strip().splitlines()[-1]


def test_proxy_validity_truth_check_pairs_each_grid_allocation_with_its_own_final_rows():
    from bench.proxy_validity import truth_check

    arms = ["uniform_s0", "sensitivity_s0", "random_s0", "random_s1", "searched_s0", "searched_s1"]
    rows = [{"model": "resnet20", "target": 0.3, "source": f"grid:{a}", "test_acc": 0.70 + 0.01 * i}
            for i, a in enumerate(arms)] + [{"model": "resnet20", "target": 0.3, "source": "random#0", "test_acc": 0.9}]
    final = []
    for i, a in enumerate(arms):
        arm, seed = a.rsplit("_s", 1)
        final.append({"model": "resnet20", "target": 0.3, "arm": arm, "recipe": "lr-rewind", "seed": int(seed),
                      "round": 1, "test_acc": 0.80 - 0.01 * i})  # ranked backwards: Spearman -1
    # a deterministic arm averages its seeds; round-2, other recipes and other seeds of a seeded arm are left out
    final += [{"model": "resnet20", "target": 0.3, "arm": "uniform", "recipe": "lr-rewind", "seed": 1, "round": 1,
               "test_acc": 0.82},
              {"model": "resnet20", "target": 0.3, "arm": "random", "recipe": "lr-rewind", "seed": 2, "round": 1,
               "test_acc": 0.10},
              {"model": "resnet20", "target": 0.3, "arm": "searched", "recipe": "lr-rewind", "seed": 0, "round": 2,
               "test_acc": 0.10},
              {"model": "resnet20", "target": 0.3, "arm": "sensitivity", "recipe": "scratch-B", "seed": 0,
               "round": 1, "test_acc": 0.10}]
    check = truth_check(rows, final)
    assert set(check) == {"resnet20@0.3"}
    c = check["resnet20@0.3"]
    assert c["n"] == 6 and abs(c["spearman"] + 1) < 1e-9
    pairs = {p["source"]: p for p in c["pairs"]}
    assert pairs["grid:uniform_s0"]["final"] == pytest.approx(0.81) and pairs["grid:uniform_s0"]["final_rows"] == 2
    assert all(p["final_rows"] == 1 for s, p in pairs.items() if s != "grid:uniform_s0")
    assert truth_check(rows[:4], final) == {}  # under 5 allocations: no figure



def test_proxy_validity_lists_missing_candidates_grid_allocations_and_scores(tmp_path, monkeypatch):
    import bench.proxy_validity as pv

    monkeypatch.setattr(pv, "POOLS", {("resnet56", 0.3): 3, ("resnet20", 0.5): 1})
    monkeypatch.setattr(pv, "GRID", tmp_path)
    for arm in ("searched_s0", "uniform_s0"):
        (tmp_path / f"resnet56_t0.3_{arm}.json").write_text("{}")
    every = {s: {"value": 0.5} for s in pv.SCORES}
    rows = [{"model": "resnet56", "target": 0.3, "source": "grid:searched_s0", "scores": every},
            {"model": "resnet56", "target": 0.3, "source": "random#0",
             "scores": {s: v for s, v in every.items() if s != "finetune:100"}},
            {"model": "resnet20", "target": 0.5, "source": "random#0", "scores": every}]
    assert pv.missing_work({"rows": rows}) == [
        "resnet56@0.3: 2 of 3 random candidates; grid uniform_s0; scores on fewer rows: finetune:100 (missing on 1 of 2)"]
    assert pv.missing_work({"rows": rows[:1] + rows[2:]})[0].startswith("resnet56@0.3: 3 of 3 random candidates;")

@pytest.mark.slow
def test_agent_vs_sensitivity_runs_a_cell_end_to_end_through_two_kills(tmp_path, monkeypatch):
    """One tiny cell through the real loop (sweep, random search, the default agent, its kept policy), killed
    after the random search and again after the agent's search: the sweep is kept, both searches resume from
    their checkpoints with their earlier seconds counted, the row is written and the run folders removed; the
    agent's best is never below the sensitivity allocation it plays first, by its own score."""
    import json

    import numpy as np

    import bench.agent_vs_sensitivity as avs
    from autoprune.workspace import open_workspace

    out, work = tmp_path / "grid.json", tmp_path / "runs"

    def tiny(model):
        return open_workspace(model, None, "synthetic", val_size=64, calib_size=32, precision="fp32")

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    def go():
        record = avs.load(out, "x", 37 + 4)  # ResNet-20's sweep is 37 scores: 4 episodes after it
        record.update(score="adaptive-bn:loss", top1="adaptive-bn")  # the loop, not the default score's cost
        avs.run(record, out, ["resnet20"], [("ddpg", "sensitivity")], (0.5,), (0,), work, open_ws=tiny)

    with monkeypatch.context() as m:
        m.setattr(avs, "both", killed)  # dies right after the random search
        with pytest.raises(RuntimeError, match="killed"):
            go()
    saved = json.loads(out.read_text())
    assert saved["tables"]["resnet20"]["evaluations"] == 37 and not saved["cells"]
    assert (work / "resnet20_t0.5_s0" / "random" / "checkpoints").exists()
    with monkeypatch.context() as m:
        m.setattr(avs, "PolicyAllocator", killed)  # dies right after the agent's search
        with pytest.raises(RuntimeError, match="killed"):
            go()
    c = json.loads(out.read_text())["cells"][0]
    assert c["random_resumed_seconds"] > 0 and c["random_seconds"] >= c["random_resumed_seconds"]
    assert not (work / "resnet20_t0.5_s0" / "random").exists()
    go()
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["episodes"] == 4 and rows[0]["sweep_evaluations"] == 37
    r = rows[0]
    assert r["resumed_seconds"] > 0 and r["seconds"] >= r["resumed_seconds"]
    assert not (work / "resnet20_t0.5_s0" / "ddpg-sensitivity").exists()
    assert all(np.isfinite(r[k]) for k in ("best", "best_top1", "policy", "random_best", "sensitivity", "uniform"))
    assert r["best"] >= max(r["sensitivity"], r["uniform"]) - 1e-9


def test_agent_variants_reads_settings_and_refuses_unknown_ones():
    import json

    from bench.agent_variants import parse_settings, report

    wanted = {"warmup_episodes": 50, "noise_decay": 0.95}
    assert parse_settings(json.dumps(wanted)) == wanted
    for bad in ("warmup_episodes=50", "[50]", '{"no_such_setting": 1}'):
        with pytest.raises(SystemExit, match="--settings"):
            parse_settings(bad)
    row = {"model": "resnet56", "target": 0.5, "seed": 3, "settings": {}, "best_top1": 0.8795,
           "sensitivity_top1": 0.8725, "best": -0.4168, "sensitivity": -0.4405, "best_episode": 89, "episodes": 91}
    assert "| resnet56 | 50% | default | 3 | 87.95 | +0.70 | +0.0237 | 89 of 91 |" in report({"rows": [row]})


def test_agent_vs_sensitivity_budget_by_agent_episodes(tmp_path):
    """``--agent-episodes N``: the agent plays N episodes after the sweep, random search gets the sweep's count
    more; a file holding another budget is refused in one line."""
    import bench.agent_vs_sensitivity as avs

    assert avs.budget_of({"evaluations": 200, "agent_episodes": None}, 109) == (200, 91)
    assert avs.budget_of({"evaluations": None, "agent_episodes": 200}, 109) == (309, 200)
    out = tmp_path / "grid.json"
    record = avs.load(out, "x", None, 200, 50)
    record["tables"] = {"resnet20": {"evaluations": 37}, "resnet56": {"evaluations": 109}}
    avs.save(record, out)
    assert "random search gets as many evaluations as the sweep and those episodes (237 on resnet20, 309 on " \
           "resnet56)" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="another budget .*agent_episodes 200.*pass those options"):
        avs.load(out, "x", 200)
    with pytest.raises(SystemExit, match="--agent-episodes 1: the agent needs at least 2 episodes"):
        avs.main(["--agent-episodes", "1"])
    with pytest.raises(SystemExit, match="--smoke runs its own budget"):
        avs.main(["--smoke", "--agent-episodes", "200"])


@pytest.mark.slow
def test_agent_vs_sensitivity_agent_episodes_run_a_tiny_cell(tmp_path):
    """A tiny cell at ``agent_episodes``: the agent's row plays exactly that many episodes with the record's
    warm-up, and random search scored the sweep's 37 evaluations more."""
    import json

    import bench.agent_vs_sensitivity as avs
    from autoprune.workspace import open_workspace

    out = tmp_path / "grid.json"
    record = avs.load(out, "x", None, 3, 2)
    record.update(score="adaptive-bn:loss", top1="adaptive-bn")
    avs.run(record, out, ["resnet20"], [("ddpg", "relative")], (0.5,), (0,), tmp_path / "runs",
            open_ws=lambda m: open_workspace(m, None, "synthetic", val_size=64, calib_size=32, precision="fp32"))
    saved = json.loads(out.read_text())
    row, cell = saved["rows"][0], saved["cells"][0]
    assert (row["episodes"], row["config"]["warmup_episodes"], row["sweep_evaluations"]) == (3, 2, 37)
    assert 37 < row["evaluations"] <= 37 + 3  # what the agent's own scorer scored: at most its 3 episodes
    assert cell["random_evaluations"] == 37 + 3
