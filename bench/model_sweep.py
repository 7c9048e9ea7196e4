"""Every model a user brings: each torchvision classifier and a list of timm models, pruned to 50% of
its MACs at its own input size, or refused in one line.

    python -m bench.model_sweep                      # every model; resumes (rows already in the JSON are kept)
    python -m bench.model_sweep --models tv:resnet18 timm:convnext_atto --out /tmp/sweep.json

For each model (random weights, 10 classes, no download): trace at the family's input size
(``model_info``), solve the uniform keep ratio for 50% of MACs, prune, save, reload, count the reloaded
model's MACs with torch's ``FlopCounterMode`` at that size (must be 50% within 1%), export to ONNX and
compare with onnxruntime (``numpy.allclose``-style, rtol 1e-3 / atol 1e-4). A model autoprune cannot
handle must stop with one ``AutopruneError`` line; anything else (a traceback, a wrong count, a broken
export) is a failure. ``tests/test_model_sweep.py`` runs ``check`` on a subset in CI; this script writes
``bench/results/model-sweep.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
import warnings
from pathlib import Path

import torch

from autoprune.core.cost import counted_macs
from autoprune.core.io import load_model_noting, load_pruned, save_pruned
from autoprune.core.problem import PruningProblem, uniform_allocation
from autoprune.core.prune import prune
from autoprune.core.structure import ModelStructure
from autoprune.errors import AutopruneError
from autoprune.models import input_hw, model_info

OUT = Path(__file__).resolve().parent / "results" / "model-sweep.json"
TARGET = 0.5
TOLERANCE = 0.01  # relative: the reloaded model's MACs within 1% of 50% of the dense model's

# small members of the timm families a user is likely to bring (no weights are downloaded)
TIMM = ["timm:resnet18", "timm:resnet50d", "timm:seresnext26d_32x4d", "timm:mobilenetv3_small_100",
        "timm:efficientnet_b0", "timm:ghostnet_100", "timm:convnext_atto", "timm:vit_tiny_patch16_224",
        "timm:deit_tiny_patch16_224", "timm:densenet121", "timm:inception_v3", "timm:regnetx_002",
        "timm:regnety_002", "timm:mobilevit_xxs", "timm:levit_128s", "timm:dla34", "timm:rexnet_100",
        "timm:lcnet_050", "timm:mixnet_s", "timm:cspresnet50", "timm:edgenext_xx_small", "timm:mobileone_s0",
        "timm:repvgg_a0", "timm:tinynet_e", "timm:efficientformer_l1", "timm:poolformer_s12"]

FAMILIES = [  # (pattern on the name without its prefix, family), first match wins
    (r"^(vit|deit|swin|maxvit|levit|mobilevit|efficientformer)", "attention"),
    (r"^convnext", "ConvNeXt"), (r"^(edgenext|poolformer)", "metaformer"),
    (r"^shufflenet", "channel shuffle"), (r"^(googlenet|inception)", "inception"),
    (r"^densenet", "dense"), (r"^(mobilenet_v3|mobilenetv3|efficientnet|semnasnet|tinynet|mixnet|rexnet)",
                               "depthwise + SE"),
    (r"^(mobilenet|mnasnet|lcnet|ghostnet|mobileone)", "depthwise"), (r"^(regnet_y|regnety|seresnext)", "grouped + SE"),
    (r"^(regnet|resnext|regnetx)", "grouped"), (r"^(resnet|wide_resnet|cspresnet|dla)", "residual"),
    (r"^(vgg|alexnet|repvgg)", "plain"), (r"^squeezenet", "fire (squeeze-expand)"),
]


def torchvision_models() -> list[str]:
    import torchvision

    return ["tv:" + n for n in torchvision.models.list_models(module=torchvision.models)]


def family(name: str) -> str:
    bare = name.split(":", 1)[1]
    return next((fam for pattern, fam in FAMILIES if re.match(pattern, bare)), "other")


def _onnx_parity(model: torch.nn.Module, path: Path, hw: tuple[int, int], opset: int | None) -> dict:
    from autoprune.deploy.export import ParityError, export

    try:
        report = export(model, path, "onnx", input_size=hw, batch_sizes=(1, 2), opset=opset)
    except ParityError as exc:
        report = exc.report
    return {"export_ok": report["parity_ok"], "export_max_abs_diff": max(report["max_abs_diff"].values()),
            "export_tolerance_ratio": max(report["max_tolerance_ratio"].values())}


def check(name: str, folder: str | Path, target: float = TARGET, export: bool = True, opset: int | None = None) -> dict:
    """One model end to end; the row says ``pruned`` (every check passed), ``refused`` (one-line
    ``AutopruneError``) or ``failing`` (anything else, with what went wrong). ``opset`` below 18 uses
    torch's TorchScript-based ONNX exporter (about 5x faster than the default one: the CI test's choice)."""
    t0 = time.perf_counter()
    info = model_info(name)
    hw = input_hw(info.input_size)
    row: dict = {"model": name, "family": family(name), "input_size": "x".join(map(str, hw)),
                 "exporter": "dynamo" if opset is None or opset >= 18 else f"torchscript-onnx (opset {opset})"}
    stage = "build"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision/timm init chatter, exporter chatter
            torch.manual_seed(0)
            model, dropped = load_model_noting(name, 10)
            model.eval()
            with torch.no_grad():  # torchvision's ViTs start with a zero head: their outputs (and ONNX diff) are 0
                for p in model.parameters():
                    if p.dim() > 1 and not p.any():
                        p.normal_(0, 0.02)
            x = torch.randn(1, 3, *hw)
            stage = "trace"
            structure = ModelStructure(model, x, num_classes=10)
            row.update(groups=len(structure.groups), held_groups=len(structure.held), aux_dropped=dropped)
            stage = "allocate"
            allocation = uniform_allocation(PruningProblem(structure, target))
            stage = "prune"
            pruned = prune(structure, allocation).eval()
            stage = "save"
            path = Path(folder) / f"{name.replace(':', '_')}.pt"
            save_pruned(pruned, name, 10, path, input_size=list(hw))
            again, _ = load_pruned(path)
            again.eval()
            with torch.no_grad():
                same = torch.allclose(again(x), pruned(x))
            stage = "count"
            dense_macs, kept_macs = counted_macs(model, x), counted_macs(again, x)
            ratio = kept_macs / dense_macs
            row.update(dense_macs=dense_macs, macs_kept=ratio, predicted=structure.macs(allocation.counts(structure))
                       / structure.dense_macs, params_kept=sum(p.numel() for p in again.parameters())
                       / sum(p.numel() for p in model.parameters()), reload_identical=same)
            if export:
                stage = "export"
                row.update(_onnx_parity(again, Path(folder) / f"{name.replace(':', '_')}.onnx", hw, opset))
    except AutopruneError as exc:
        row.update(result="refused", reason=str(exc), stage=stage)
    except Exception as exc:  # noqa: BLE001 -- the sweep records what a user would have seen as a traceback
        row.update(result="failing", reason=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}",
                   stage=stage)
    else:
        problems = []
        if abs(row["macs_kept"] / target - 1) > TOLERANCE:
            problems.append(f"MACs kept {row['macs_kept']:.4f}, not {target} within {TOLERANCE:.0%}")
        if not row["reload_identical"]:
            problems.append("the reloaded model computes something else")
        if export and not row["export_ok"]:
            problems.append(f"ONNX parity off by {row['export_tolerance_ratio']:.3g}x the tolerance")
        row.update(result="failing" if problems else "pruned", reason="; ".join(problems))
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def table(rows: list[dict]) -> str:
    """The markdown table: model, family, result, MACs kept at its resolution, export difference."""
    lines = ["| model | family | input | result | MACs kept | ONNX max abs diff (x tolerance) | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = f"{100 * r['macs_kept']:.2f}%" if "macs_kept" in r else "-"
        diff = (f"{r['export_max_abs_diff']:.2g} ({r['export_tolerance_ratio']:.2g})"
                if "export_max_abs_diff" in r else "-")
        note = r.get("reason") or (f"aux heads {', '.join(r['aux_dropped'])} dropped" if r.get("aux_dropped") else "")
        if r.get("held_groups") and r["result"] == "pruned":
            note = (note + "; " if note else "") + (f"{r['held_groups']} groups held (widths read from module "
                                                       "attributes: attention heads, shape tuples)")
        lines.append(f"| {r['model']} | {r['family']} | {r['input_size']} | {r['result']} | {kept} | {diff} | "
                     f"{note.replace('|', '/')} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    return {k: sum(r["result"] == k for r in rows) for k in ("pruned", "refused", "failing")}


# the most expensive models go last (hundreds of GMACs, or weights in the GB), so a partial run covers the rest
LAST = ("vit_l", "vit_h", "regnet_y_128gf", "regnet_y_32gf", "regnet_x_32gf", "regnet_y_16gf", "regnet_x_16gf",
        "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_m", "efficientnet_v2_l",
        "convnext_large", "convnext_base", "vgg", "resnext101", "wide_resnet101", "resnet152", "densenet161",
        "densenet201")


def _one(name: str, timeout: float, opset: int | None) -> dict:
    """``check`` in a child process: a model that hangs (or is killed for memory) is a failing row."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "bench.model_sweep", "--one", name, "--row-out", str(out), "--folder", tmp]
        if opset is not None:
            cmd += ["--opset", str(opset)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"model": name, "family": family(name), "input_size": "x".join(map(str, input_hw(
                model_info(name).input_size))), "result": "failing", "reason": f"did not finish in {timeout:.0f} s",
                    "seconds": round(time.perf_counter() - t0, 2)}
        if not out.exists():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
            return {"model": name, "family": family(name), "result": "failing", "input_size": "-",
                    "reason": f"process ended with code {proc.returncode}: {tail}",
                    "seconds": round(time.perf_counter() - t0, 2)}
        return json.loads(out.read_text())


def _write(path: Path, rows: list[dict], opset: int | None) -> dict:
    command = "python -m bench.model_sweep" + (f" --opset {opset}" if opset is not None else "")
    record = {"command": command, "target": TARGET, "tolerance": TOLERANCE, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "counts": summary(rows), "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    md = (f"# Model sweep: every model pruned to {TARGET:.0%} of MACs at its own input size\n\n"
          f"`{record['command']}` (random weights, 10 classes, {record['threads']} thread(s); ONNX exporter per row "
          "in the JSON: torch's default one, or with --opset 17 its TorchScript-based one, 5x faster). Each model "
          "is traced at its family's input size, given the uniform keep ratio for "
          f"{TARGET:.0%} of MACs, pruned, saved and reloaded; the reloaded model's MACs are counted by torch's "
          "FlopCounterMode at that size (conv + linear; 50% within 1% passes) and its ONNX export is run by "
          "onnxruntime (pass: |diff| <= 1e-4 + 1e-3 |ref| everywhere; the column gives the largest |diff| and its "
          f"ratio to that allowance). Counts: {', '.join(f'{k} {v}' for k, v in record['counts'].items())}.\n\n"
          + table(rows) + "\n")
    missing = [n for n in torchvision_models() + TIMM if n not in {r["model"] for r in rows}]
    if missing:
        md += (f"\nNot run yet ({len(missing)}; rerun the command to continue, rows are kept): "
               + ", ".join(missing) + ".\n")
    path.with_suffix(".md").write_text(md)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="default: every torchvision classifier and the timm list")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--redo", action="store_true", help="re-run models already in the JSON")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per model before it counts as failing")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (below 18: the faster legacy exporter)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: one model
    parser.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        args.row_out.write_text(json.dumps(check(args.one, args.folder, opset=args.opset)))
        return
    names = args.models or sorted(torchvision_models() + TIMM, key=lambda n: any(k in n for k in LAST))
    record = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    done = {r["model"]: r for r in record["rows"]}
    if args.redo:  # the named models run again; the others' rows stay
        done = {n: r for n, r in done.items() if n not in names}
    rows = list(done.values())
    for name in names:
        if name in done:
            continue
        row = _one(name, args.timeout, args.opset)
        rows.append(row)
        print(f"{name}: {row['result']} {row.get('reason', '')} ({row['seconds']} s)", flush=True)
        _write(args.out, rows, args.opset)
    print(_write(args.out, rows, args.opset)["counts"])


if __name__ == "__main__":
    main()
