"""envs/ and agents/ install as autoprune.envs / autoprune.agents, never as top-level packages."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_envs_and_agents_under_autoprune(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("autoprune-*.whl"))
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    names = set(zipfile.ZipFile(wheel).namelist())
    assert tops == {"autoprune", next(t for t in tops if t.endswith(".dist-info"))}
    assert {"autoprune/envs/channel_pruning.py", "autoprune/agents/rl/search.py", "autoprune/cli/commands/search.py"} <= names


def test_installed_subpackages_resolve_from_anywhere(tmp_path):
    code = "import autoprune.envs, autoprune.agents; print(autoprune.envs.ENV_ID, autoprune.agents.list_allocators())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert "autoprune/ChannelPruning-v0" in out.stdout and "uniform" in out.stdout
    assert subprocess.run([sys.executable, "-c", "import envs"], cwd=tmp_path, capture_output=True).returncode != 0
