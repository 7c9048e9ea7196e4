"""What the READMEs promise: CI runs exactly the README's test command; every results file they cite exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md"]


def test_the_readme_test_command_is_the_one_ci_runs():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert len(ci) == 1
    assert ci[0] in (ROOT / "README.md").read_text().splitlines()


def test_every_results_file_the_readmes_cite_exists():
    cited = {m for doc in DOCS for m in re.findall(r"bench/results/[\w./-]*\w", doc.read_text())}
    assert cited, "no results file cited"
    assert sorted(c for c in cited if not (ROOT / c).exists()) == []
