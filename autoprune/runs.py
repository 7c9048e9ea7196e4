"""The run-folder rule every command that writes a folder follows."""
from __future__ import annotations

from pathlib import Path

from .errors import AutopruneError


def check_run_dir(out: str | Path, resume: bool = False, *, resumable: bool = True) -> None:
    """Refuse a non-empty ``out`` unless resuming it; refuse to resume a folder that holds no run."""
    out = Path(out)
    if resume:
        if not (out / "config.yaml").exists():
            raise AutopruneError(f"nothing to resume in '{out}': it holds no run (drop --resume)")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "holds another run" if (out / "config.yaml").exists() else "is not an empty directory"
        hint = "pass --resume to continue it or choose another --output" if resumable else "choose another --output"
        raise AutopruneError(f"run directory '{out}' {what}: {hint}")
