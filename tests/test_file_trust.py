"""Files autoprune reads cannot run code: a pickle payload that would create a file, put in every kind of
file autoprune reads, leaves no file and (where the file is the user's input) gets one line."""
import base64
import json
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.cli.main import main
from autoprune.core.problem import PruningProblem
from autoprune.core.scoring import FunctionEvaluator, Scorer
from autoprune.errors import AutopruneError

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "bench" / "results" / "policies"
LEGACY = POLICIES / "legacy" / "universal-sb3.zip"  # the universal policy as it was first committed (SB3 zip)
pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: the file's existence says whether the payload ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def payload_bytes(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


def _rewrite_zip(src: Path, dst: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, replace.get(name, zin.read(name)))


def crafted_old_policy(tmp_path: Path, entry: str, marker: Path) -> Path:
    """The committed old-format policy with ``entry`` (a key of its ``data`` JSON, or a zip entry) holding
    the payload, stored the way SB3 stores non-JSON values (``{":serialized:": base64(pickle)}``)."""
    with zipfile.ZipFile(LEGACY) as z:
        data = json.loads(z.read("data"))
    out = tmp_path / f"crafted-{entry.replace('/', '_')}.zip"
    if entry in data:
        data[entry] = {":type:": "<class 'function'>", ":serialized:": base64.b64encode(payload_bytes(marker)).decode()}
        _rewrite_zip(LEGACY, out, {"data": json.dumps(data).encode()})
    else:
        _rewrite_zip(LEGACY, out, {entry: payload_bytes(marker)})
    return out


needs_legacy = pytest.mark.skipif(not LEGACY.exists(), reason="old-format policy not committed")


@needs_legacy
def test_crafted_learning_rate_pickle_never_runs(tmp_path, capsys, resnet20_structure):
    from autoprune.agents import get_allocator
    from autoprune.agents.rl import RLSearch
    from autoprune.envs import ChannelPruningEnv

    marker = tmp_path / "ran"
    crafted = crafted_old_policy(tmp_path, "learning_rate", marker)
    with pytest.raises(AutopruneError) as exc:  # policy:PATH, as compare and the library read it
        get_allocator(f"policy:{crafted}")
    assert "old format" in one_line(exc) and f"autoprune convert-policy {crafted} NEW.zip" in str(exc.value)
    code = main(["apply", "--policy", str(crafted), "--model", "resnet20", "--data", "synthetic", "--macs", "0.5",
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "convert-policy" in err, err
    env = ChannelPruningEnv(PruningProblem(resnet20_structure, 0.5), evaluate=False, action="relative")
    with pytest.raises(AutopruneError, match="old format"):  # search --init-policy
        RLSearch(episodes=1, init_policy=str(crafted), action="relative")._build(env)
    assert not marker.exists()
    # the payload is live: the reader this format replaced runs it
    from stable_baselines3.common.save_util import load_from_zip_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3 warns about entries it cannot rebuild (the payload returns None)
        load_from_zip_file(crafted, device="cpu", print_system_info=False)
    assert marker.exists()


@needs_legacy
def test_payload_in_any_entry_of_the_old_format_never_runs(tmp_path):
    from autoprune.agents.rl.policy_io import load_policy

    with zipfile.ZipFile(LEGACY) as z:
        entries = [n for n in z.namelist() if n != "data"] + list(json.loads(z.read("data")))
    assert "learning_rate" in entries and "policy.pth" in entries and "policy_class" in entries
    for i, entry in enumerate(entries):
        marker = tmp_path / f"ran-{i}"
        with pytest.raises(AutopruneError) as exc:
            load_policy(crafted_old_policy(tmp_path, entry, marker))
        assert "autoprune convert-policy" in one_line(exc), entry
        assert not marker.exists(), entry


def test_payload_inside_a_new_format_file_never_runs(tmp_path):
    """Pickles where the new format keeps JSON and safetensors, or beside them, are refused unread."""
    from autoprune.agents.rl.policy_io import load_policy

    good = POLICIES / "universal.zip"
    marker = tmp_path / "ran"
    cases = {"policy.json": "cannot be read", "actor.safetensors": "cannot be read"}
    for entry, expected in cases.items():
        path = tmp_path / f"{entry}.zip"
        _rewrite_zip(good, path, {entry: payload_bytes(marker)})
        with pytest.raises(AutopruneError, match=expected) as exc:
            load_policy(path)
        one_line(exc)
    torch_file = tmp_path / "t.pt"  # a torch zip-pickle where safetensors belongs
    torch.save({"layers.0.weight": Payload(marker)}, torch_file)
    path = tmp_path / "torch.zip"
    _rewrite_zip(good, path, {"actor.safetensors": torch_file.read_bytes()})
    with pytest.raises(AutopruneError, match="cannot be read"):
        load_policy(path)
    extra = tmp_path / "extra.zip"
    shutil.copy(good, extra)
    with zipfile.ZipFile(extra, "a") as z:
        z.writestr("hook.pkl", payload_bytes(marker))
    with pytest.raises(AutopruneError, match="not a policy written by autoprune") as exc:
        load_policy(extra)
    one_line(exc)
    assert not marker.exists()


@pytest.mark.parametrize("algo", ["ddpg", "sac"])
def test_search_policy_round_trips_and_acts_like_sb3(tmp_path, resnet20_structure, algo):
    """What search writes holds no pickle; rebuilt from its JSON it gives SB3's deterministic action exactly
    and plays the allocation the search found."""
    from autoprune.agents.policy import PolicyAllocator
    from autoprune.agents.rl import RLSearch
    from autoprune.agents.rl.policy_io import load_policy

    problem = PruningProblem(resnet20_structure, 0.5)
    scorer = Scorer(problem, FunctionEvaluator(lambda m: float(m.conv1.weight.detach().abs().sum()) / 1e3))
    search = RLSearch(episodes=4, warmup_episodes=2, eval_every=1, seed=0, algo=algo)
    result = search.search(problem, scorer, tmp_path)
    assert result.policy_distilled
    for name in ("policy.zip", "final_policy.zip"):
        with zipfile.ZipFile(tmp_path / name) as z:
            assert sorted(z.namelist()) == ["actor.safetensors", "policy.json"]
    net, meta = load_policy(tmp_path / "policy.zip")
    assert meta["algo"] == algo
    obs = np.random.default_rng(0).uniform(0, 1, (50, net.observation_shape[0])).astype(np.float32)
    for o in obs:  # the search's model is the kept (distilled) actor
        assert np.array_equal(net.act(o), search.model.predict(o, deterministic=True)[0])
    fresh = PruningProblem(resnet20_structure, 0.5)
    assert PolicyAllocator(tmp_path / "policy.zip").allocate(fresh, Scorer(fresh, scorer.evaluator)) == result.allocation


@needs_legacy
def test_convert_policy_refuses_an_old_observation_layout_in_one_line(tmp_path, capsys):
    """The legacy SB3 policies were trained on observation layout v1 (no sensitivity features): converting
    one would not make it usable, so it is refused in one line and nothing is written."""
    new = tmp_path / "universal.zip"
    assert main(["convert-policy", str(LEGACY), str(new)]) == 2
    err = capsys.readouterr().err.strip()
    assert "another observation layout" in err and "v1" in err and "\n" not in err
    assert not new.exists()


def test_convert_policy_help_says_it_unpickles(capsys):
    with pytest.raises(SystemExit):
        main(["convert-policy", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "unpickles" in out and "only for files you trust" in out


def test_resume_refuses_checkpoints_not_stamped_by_this_version(tmp_path, resnet20_structure):
    from autoprune.agents.rl import RLSearch

    def search(resume: bool, episodes: int = 2):
        problem = PruningProblem(resnet20_structure, 0.5)
        return RLSearch(episodes=episodes, warmup_episodes=1, seed=0, checkpoint_every=1).search(
            problem, Scorer(problem, FunctionEvaluator(lambda m: 0.5)), tmp_path, resume=resume)

    search(False)
    root = tmp_path / "checkpoints"
    stamp = json.loads((root / "format.json").read_text())
    assert stamp["format"] == "autoprune.checkpoint/1"
    marker = tmp_path / "ran"
    latest = root / json.loads((root / "latest.json").read_text())["dir"]
    (latest / "state.pkl").write_bytes(payload_bytes(marker))
    for bad in ({**stamp, "autoprune": "0.0.0"}, None, "not json"):
        if bad is None:
            (root / "format.json").unlink()
        else:
            (root / "format.json").write_text(json.dumps(bad) if isinstance(bad, dict) else bad)
        with pytest.raises(AutopruneError, match="not written by this autoprune version") as exc:
            search(True, episodes=3)
        one_line(exc)
        assert not marker.exists()
    (root / "latest.json").write_text(json.dumps({"episode": 2, "dir": "../.."}))
    (root / "format.json").write_text(json.dumps(stamp))
    with pytest.raises(AutopruneError, match="points outside"):
        search(True, episodes=3)
    assert not marker.exists()


def test_model_files_are_read_weights_only(tmp_path):
    """Checkpoints and pruned-model files (and training states, read the same way) refuse pickled objects."""
    from autoprune.core.io import PRUNED_FORMAT, load_model, load_pruned, read_weights_only

    marker = tmp_path / "ran"
    plain, pruned = tmp_path / "ckpt.pt", tmp_path / "pruned.pt"
    torch.save({"state_dict": {"conv1.weight": Payload(marker)}}, plain)
    torch.save({"format": PRUNED_FORMAT, "base": "resnet20", "num_classes": 10, "channels": {},
                "state_dict": Payload(marker), "meta": {}}, pruned)
    for call in (lambda: load_model("resnet20", 10, plain), lambda: load_pruned(pruned),
                 lambda: read_weights_only(plain, "training state")):
        with pytest.raises(AutopruneError, match="cannot be read") as exc:
            call()
        one_line(exc)
    assert not marker.exists()


def test_allocation_files_are_json(tmp_path, resnet20_structure):
    from autoprune.core.allocation import Allocation

    marker = tmp_path / "ran"
    path = tmp_path / "alloc.json"
    path.write_bytes(payload_bytes(marker))
    with pytest.raises(AutopruneError, match="not valid JSON") as exc:
        Allocation.load(path, resnet20_structure)
    one_line(exc)
    assert not marker.exists()


def test_config_files_and_option_specs_are_safe_yaml(tmp_path):
    from autoprune.config import load_yaml
    from autoprune.registry import parse_spec

    marker = tmp_path / "ran"
    tag = f"!!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').close()\"]"
    path = tmp_path / "config.yaml"
    path.write_text(f"episodes: {tag}\n")
    with pytest.raises(AutopruneError, match="not valid YAML") as exc:
        load_yaml(path)
    one_line(exc)
    with pytest.raises(AutopruneError, match="cannot read the options"):
        parse_spec(f"random@samples={tag}")
    assert not marker.exists()


def test_data_cache_with_a_pickle_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    from autoprune.train import data as data_mod

    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "ran"
    path = data_mod.cache_dir() / "k.pt"
    torch.save({"images": Payload(marker), "labels": torch.zeros(1)}, path)
    built = data_mod.ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    got = data_mod._cached("k", lambda: built)
    assert got is built and not marker.exists()
    assert torch.equal(torch.load(path, weights_only=True)["labels"], built.labels)  # replaced by a clean cache


def test_latency_table_cache_with_a_pickle_is_measured_again(tmp_path, monkeypatch, resnet20_structure, fake_clock):
    from autoprune.deploy import latency as lat
    from autoprune.train.data import cache_dir

    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "ran"
    first = lat.latency_table(resnet20_structure, batch_size=1, points=2)
    (path,) = (cache_dir() / "latency").glob("*.json")
    path.write_bytes(payload_bytes(marker))
    n = len(fake_clock)
    assert lat.latency_table(resnet20_structure, batch_size=1, points=2).key == first.key
    assert len(fake_clock) > n and not marker.exists()  # measured again, the file rewritten as JSON
    assert json.loads(path.read_text())["key"] == first.key
