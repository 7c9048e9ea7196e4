"""The dense baselines every benchmark starts from.

The shared checkpoints were trained on the original CIFAR-10 and lose ~10 points on the JPEG
copy, so benchmarks first fine-tune them briefly on the JPEG training split (validation images
held out) and cache the result under ``$AUTOPRUNE_CACHE/finetuned``.

    python -m bench.base_models resnet20 resnet56     # builds the cache (one epoch each: ~3 min and ~9 min on 2 idle cores)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from autoprune.core.io import save_pruned
from autoprune.train.data import cache_dir
from autoprune.train.evaluator import accuracy
from autoprune.train.training import TrainRecipe, train
from autoprune.workspace import open_workspace

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = f"imagefolder:{SHARED / 'data' / 'cifar10'}"
CHECKPOINTS = {"resnet20": SHARED / "models" / "resnet20-12fca82f.th",
               "resnet56": SHARED / "models" / "resnet56-4bfd9763.th"}
RECIPES = {"resnet20": TrainRecipe(epochs=1, lr=0.01, weight_decay=1e-4),
           "resnet56": TrainRecipe(epochs=1, lr=0.01, weight_decay=1e-4)}


def finetuned_checkpoint(model: str, seed: int = 0) -> Path:
    """Path of the JPEG-adapted dense checkpoint (built on first use)."""
    recipe = RECIPES[model]
    path = cache_dir() / "finetuned" / f"{model}-jpeg-e{recipe.epochs:g}-s{seed}.pt"
    if path.exists():
        return path
    ws = open_workspace(model, str(CHECKPOINTS[model]), DATA, seed=seed)
    result = train(ws.model, ws.data, recipe, device=ws.device, seed=seed, precision="fp32")  # as first built
    save_pruned(ws.model, model, ws.data.num_classes, path)
    x, y = ws.data.tensors("test", ws.device)
    vx, vy = ws.data.tensors("val", ws.device)
    info = {"model": model, "recipe": recipe.__dict__, "seconds": result.seconds,
            "val_acc": accuracy(ws.model, vx, vy), "test_acc": accuracy(ws.model, x, y)}
    path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))
    return path


def record(models: list[str]) -> Path:
    """bench/results/base-models.json: the dense baselines every benchmark's drop is measured from."""
    out = Path(__file__).resolve().parent / "results" / "base-models.json"
    rows = {name: json.loads(finetuned_checkpoint(name).with_suffix(".json").read_text()) for name in models}
    out.write_text(json.dumps({"command": "python -m bench.base_models " + " ".join(models), "data": DATA,
                               "models": rows}, indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(record(sys.argv[1:] or ["resnet20", "resnet56"]))
