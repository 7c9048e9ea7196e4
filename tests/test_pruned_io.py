"""A pruned model saved to disk loads back -- in a fresh process, without pickled classes."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from autoprune.core.allocation import Allocation
from autoprune.core.io import load_model, load_pruned, save_pruned
from autoprune.core.prune import prune
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.models import create_model

from .conftest import flop_counter_cost

LOAD_AND_RUN = """
import sys, torch
from autoprune.core.io import load_pruned
model, base = load_pruned(sys.argv[1])
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(model.eval()(x), sys.argv[3])
"""


@pytest.mark.parametrize("name,size", [("resnet20", 32), ("tv:mobilenet_v2", 64)])
def test_saved_pruned_model_reloads_in_new_process(tmp_path, name, size):
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    x = torch.randn(3, 3, size, size)
    s = ModelStructure(model, x[:1], num_classes=10)
    rng = np.random.default_rng(0)
    pruned = prune(s, Allocation.from_counts(s, [int(rng.integers(1, g.channels + 1)) for g in s.groups])).eval()
    save_pruned(pruned, name, 10, tmp_path / "m.pt")
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(tmp_path / "m.pt"), str(tmp_path / "x.pt"),
                    str(tmp_path / "y.pt")], check=True)
    with torch.no_grad():
        expected = pruned(x)
    # equal up to float reduction order (the child may run on another number of threads)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt", weights_only=True), expected, rtol=1e-5, atol=1e-5)


def test_create_model_reads_pruned_files(tmp_path, resnet20_structure):
    s = resnet20_structure
    pruned = prune(s, Allocation.uniform(s, 0.25))
    save_pruned(pruned, "resnet20", 10, tmp_path / "p.pt")
    again = load_model("resnet20", 10, tmp_path / "p.pt")
    assert again.layer1[0].conv1.out_channels == pruned.layer1[0].conv1.out_channels
    with pytest.raises(AutopruneError, match="pruned resnet20"):
        load_model("resnet56", 10, tmp_path / "p.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    with pytest.raises(AutopruneError):
        load_pruned(tmp_path / "bad.pt")


def test_allocation_json_round_trip(tmp_path, resnet20_structure):
    s = resnet20_structure
    alloc = Allocation.from_ratios(s, np.linspace(0.2, 1.0, len(s.groups)))
    alloc.save(tmp_path / "a.json", s)
    again = Allocation.load(tmp_path / "a.json", s)
    assert again == alloc
    saved = json.loads((tmp_path / "a.json").read_text())  # the file's own figures, checked against torch's counter
    assert [saved["groups"][g.name]["keep"] for g in s.groups] == list(alloc.counts(s))
    assert saved["macs"] == flop_counter_cost(prune(s, alloc), torch.randn(1, 3, 32, 32))[0]
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(AutopruneError, match="not valid JSON"):
        Allocation.load(tmp_path / "broken.json", s)
    (tmp_path / "other.json").write_text('{"groups": {"nope.conv1": {"keep": 3}}}')
    with pytest.raises(AutopruneError, match="does not fit this model"):
        Allocation.load(tmp_path / "other.json", s).counts(s)
