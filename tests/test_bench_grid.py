"""Benchmark grids split across processes: parts are disjoint and together give every missing row."""
import pytest

from bench.final_quality import _key, main, planned_rows, report, rows_to_run


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
