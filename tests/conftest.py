import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# every test run gets its own cache directory: no test reads or writes the user's cache
if "AUTOPRUNE_CACHE" not in os.environ:
    os.environ["AUTOPRUNE_CACHE"] = tempfile.mkdtemp(prefix="autoprune-test-cache-")
    atexit.register(shutil.rmtree, os.environ["AUTOPRUNE_CACHE"], ignore_errors=True)
# under pytest-xdist each worker takes one core (and so do the commands it starts: two OpenMP
# pools spinning on two cores run 10-50x slower); alone, the run takes up to two
XDIST_WORKER = "PYTEST_XDIST_WORKER" in os.environ
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1 if XDIST_WORKER else max(1, min(2, os.cpu_count() or 1)))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RESNET20_CKPT = SHARED / "models" / "resnet20-12fca82f.th"
RESNET56_CKPT = SHARED / "models" / "resnet56-4bfd9763.th"


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many small kernels: a second thread only thrashes when other processes share
    the two cores (measured up to 30x slower). Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_bundle():
    from autoprune.models import IMAGENET_MEAN, IMAGENET_STD
    from autoprune.train.data import make_bundle

    return make_bundle("synthetic", IMAGENET_MEAN, IMAGENET_STD, val_size=300, calib_size=256, seed=0)


@pytest.fixture(scope="session")
def swept(tmp_path_factory):
    """``swept(model, score)``: a sensitivity.json holding that model's sweep, measured once per test run on the
    synthetic images (the xdist workers share one file, under a lock). Commands whose tests are not about the sweep
    are handed it with ``--sensitivity``, the flag a user passes to reuse another run's sweep (the sweep has tests
    of its own)."""
    from filelock import FileLock

    from autoprune.core.sensitivity import FILE, cached_sensitivity
    from autoprune.train.scores import DEFAULT_SCORE
    from autoprune.workspace import open_workspace

    if XDIST_WORKER:  # the run's base folder, above each worker's own
        folder = tmp_path_factory.getbasetemp().parent / "sweeps"
        folder.mkdir(exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp("sweeps")
    done: set[tuple[str, str]] = set()

    def table(model: str = "resnet20", score: str = DEFAULT_SCORE) -> str:
        if (model, score) not in done:
            with FileLock(folder / "sweeps.lock"):  # the other worker may be measuring it: wait, then read it
                ws = open_workspace(model, None, "synthetic", val_size=100, calib_size=64, precision="fp32")
                problem = ws.problem(0.5)
                cached_sensitivity(folder, problem, ws.scorer(problem, score), model=model)
            done.add((model, score))
        return str(folder / FILE)

    return table


@pytest.fixture(scope="session")
def resnet20_structure():
    from autoprune.core.structure import ModelStructure
    from autoprune.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", 10).eval()
    return ModelStructure(model, torch.randn(1, 3, 32, 32))


def flop_counter_cost(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Independent oracle: (conv + linear MACs per image, parameters) from torch's FlopCounterMode,
    which counts 2 FLOPs per multiply-accumulate, not from autoprune's own hooks."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(x)
    finally:
        model.train(was_training)
    ops = counter.get_flop_counts()["Global"]
    flops = sum(v for op, v in ops.items() if str(op).split(".")[1] in ("convolution", "addmm", "mm"))
    return flops // 2 // x.shape[0], sum(p.numel() for p in model.parameters())


@pytest.fixture
def fake_clock(monkeypatch, tmp_path):
    """Latency proportional to MACs as torch's ``FlopCounterMode`` counts them (a deterministic stand-in for
    the clock, independent of autoprune's own cost hooks), counting calls. Tables it times are cached in
    the test's own folder: another test's clock never sees them."""
    calls = []
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))

    def fake(model, x, precision="fp32", min_run_time=0.02):
        calls.append(1)
        return 1e-9 * flop_counter_cost(model, x)[0] * x.shape[0] + 1e-4

    from autoprune.deploy import timing

    monkeypatch.setattr(timing, "measure_latency", fake)
    return calls


def blocked_macs(model: torch.nn.Module, x: torch.Tensor, block: int = 8) -> int:
    """MACs of one forward pass with every conv/linear channel count rounded up to ``block``: how
    vectorised kernels spend time (20 channels cost what 24 do), unlike the exact MACs."""
    import math

    up = lambda c: block * math.ceil(c / block)  # noqa: E731
    total = []

    def hook(module, inputs, output) -> None:
        if isinstance(module, torch.nn.Linear):
            total.append(output.shape[0] * up(module.in_features) * up(module.out_features))
        elif module.groups == 1:
            kh, kw = module.kernel_size
            total.append(output[0, 0].numel() * output.shape[0] * kh * kw * up(module.in_channels) * up(module.out_channels))
        else:  # depthwise: one input channel per output channel
            kh, kw = module.kernel_size
            total.append(output[0, 0].numel() * output.shape[0] * kh * kw * up(module.out_channels)
                         * module.in_channels // module.groups)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sum(total)


@pytest.fixture
def blocked_clock(monkeypatch, tmp_path):
    """Latency proportional to channel-blocked MACs (``blocked_macs``, blocks of 8): a staircase in the
    channel count, as real conv kernels are. Counts its calls; caches in the test's own folder."""
    calls = []
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))

    def fake(model, x, precision="fp32", min_run_time=0.02):
        calls.append(1)
        return 1e-9 * blocked_macs(model, x) + 1e-4

    from autoprune.deploy import timing

    monkeypatch.setattr(timing, "measure_latency", fake)
    return calls
