"""Benchmark grids split across processes: parts are disjoint and together give every missing row."""
import pytest

from bench.final_quality import _key, main, planned_rows, rows_to_run


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


def test_final_quality_refuses_a_seed_outside_the_protocol(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--models", "resnet56", "--seeds", "2"])  # ResNet-56 runs seeds 0 and 1 only
    assert e.value.code == 2 and "--seeds [2] are not in the protocol" in capsys.readouterr().err
