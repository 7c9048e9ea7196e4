"""Run folders: the rule every command that writes one follows, and atomic writes for resumable files."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from autoprune.errors import AutopruneError


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


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Write to the yielded temporary path; it replaces ``path`` only if the block finishes, so a
    reader (or a resumed run after a kill) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, obj: Any, indent: int = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=str) + "\n")
