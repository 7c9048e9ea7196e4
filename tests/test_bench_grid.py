"""Benchmark grids split across processes: parts are disjoint and together give every missing row."""
from bench.final_quality import _key, planned_rows, rows_to_run


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
