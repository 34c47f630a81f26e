"""Deviceless AOT table: does every paper variant's training step fit a TPU slice / a GPU node?

    python benchmarks/aot.py --out /tmp/aot                 # every paper variant on v5e-8, v4-8 (+ h100-8)
    python benchmarks/aot.py --variants dan.py:setting1_x4 --targets v5e-8 --out /tmp/aot
    python benchmarks/aot.py --variants 'kxnet.py:*' --jobs 2 --out /tmp/aot   # resumes: rows in aot.json are kept

Each row is one `python -m jaxsr.aot --config=configs/FILE:VARIANT --target=TARGET` run in a
subprocess of its own (see jaxsr/aot.py for what is compiled and how memory and FLOPs are
counted). Paper variants are every entry of a config's `VARIANTS` except the small `tiny` / `cpu`
runs. h100-8 rows run only where the CUDA plugin is installed (`pip install 'jax[cuda12]'`; no
GPU needed). Writes OUT/aot.json (every report, keyed "FILE:VARIANT@TARGET"; rerunning skips the
keys already there unless --redo), OUT/aot.md (a row per variant and target) and
OUT/aot_variants.md (a row per variant, the targets side by side: the README's table). Compiles are slow on a small
machine (a full DAN step for a TPU: minutes on 2 cores); use --variants / --targets / --jobs.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxsr import aot, config_lib  # noqa: E402

SMALL_VARIANTS = ("tiny", "cpu")
DEFAULT_TARGETS = ("v5e-8", "v4-8", "h100-8")
GIB = 1 << 30


def paper_variants() -> list[str]:
    """"FILE:VARIANT" for every paper variant of every config in configs/."""
    rows = []
    folder = os.path.join(ROOT, "configs")
    for file in sorted(os.listdir(folder)):
        if not file.endswith(".py"):
            continue
        module = config_lib.load_module(os.path.join(folder, file))
        for variant in getattr(module, "VARIANTS", {}):
            if variant not in SMALL_VARIANTS:
                rows.append(f"{file}:{variant}")
    return rows


def run_one(variant: str, target: str, args, count_flops: bool) -> dict:
    """One `python -m jaxsr.aot` run; its JSON report plus exit status, wall time and stderr tail."""
    file, _, name = variant.partition(":")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-m", "jaxsr.aot", f"--config={os.path.join(ROOT, 'configs', file)}:{name}",
               f"--target={target}", f"--json={out}", f"--count_flops={count_flops}", f"--predict={args.predict}"]
        cmd += [f"--config.{kv}" for kv in args.override]
        env = dict(os.environ)
        env.setdefault("JAX_PLATFORMS", "cpu")
        env.setdefault("JAXSR_COMPILATION_CACHE", "0")  # the table's compile times are compiles, not cache loads
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=args.timeout)
            status, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            status, stdout, stderr = "timeout", e.stdout or "", f"timed out after {args.timeout} s"
        row = {"variant": variant, "target": target, "exit": status, "wall_s": time.time() - t0,
               "command": " ".join(cmd[1:])}
        if os.path.exists(out):
            with open(out) as f:
                row["report"] = json.load(f)
        else:
            row["error"] = (stderr if isinstance(stderr, str) else stderr.decode())[-2000:]
        row["text"] = stdout if isinstance(stdout, str) else stdout.decode()
    return row


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / GIB:.2f}"


def settings_needed(report: dict) -> str:
    step = report["programs"]["train_step"]
    if step.get("fits"):
        return "none"
    remat = report["programs"].get("train_step_remat")
    if remat is not None and remat.get("fits"):
        return "model.remat=True"
    tips = [t.split(" (")[0].replace("--config.", "") for t in report.get("advice", [])]
    prefix = "remat is not enough: " if remat is not None else ""
    return prefix + "; ".join(t for t in tips if "remat" not in t or remat is None)


def step_flops(results: dict, variant: str) -> float | None:
    """The variant's FLOPs per training step, all devices: the unrolled CPU count of whichever of
    its rows made one (the count does not depend on the target, only on the global batch)."""
    for row in results.values():
        if row["variant"] != variant or "report" not in row:
            continue
        step = row["report"]["programs"]["train_step"]
        cpu = (step.get("cpu_flops") or {}).get("flops")
        if cpu:
            return cpu * row["report"]["batch"].get("data_shards", row["report"]["num_devices"])
    return None


def keep_flops(old: dict | None, new: dict) -> None:
    """A recompiled row (--redo) keeps the FLOP count its earlier run made, if it made none itself."""
    try:
        count = old["report"]["programs"]["train_step"]["cpu_flops"]
        step = new["report"]["programs"]["train_step"]
    except (KeyError, TypeError):
        return
    step.setdefault("cpu_flops", count)


def not_checked(row: dict) -> str:
    """Why a row has no report: the global batch does not split over the target's devices (the
    paper batch of KXNet, 12, on 8 chips), the target cannot be compiled for here, or a failure."""
    found = re.search(r"data.batch_size \((\d+)\) must be divisible by the number of devices \((\d+)\)",
                      row.get("error") or "")
    if found:
        return f"batch {found.group(1)} does not split over {found.group(2)} devices"
    if row.get("exit") == 2:
        return "target unavailable here"
    if row.get("exit") == -9:  # SIGKILL: on Linux the kernel's out-of-memory killer, as a rule
        return "killed (exit -9: out of host memory? see host_peak_rss of other rows)"
    return f"failed (exit {row.get('exit')})"


def table_row(row: dict, results: dict | None = None) -> str:
    variant, target = row["variant"], row["target"]
    report = row.get("report")
    if report is None:
        reason = not_checked(row)
        return f"| {variant} | {target} | | | | | | | {reason} | |"
    step = report["programs"]["train_step"]
    mem = step.get("memory") or {}
    budget = report["memory_bytes"]
    if mem.get("from_error"):
        args_temps = "compiler refused"
    else:
        args_temps = f"{_gib(mem.get('argument'))} / {_gib(mem.get('temp'))}"
    mem_total = f"{_gib(mem.get('total'))} / {_gib(budget)}"
    total = step_flops(results or {row["variant"]: row}, variant)
    xla = step.get("xla_flops")
    n = report["num_devices"]
    if total:
        flops = f"{total:.3g}"
    elif xla:
        flops = f"{xla * n:.3g} (XLA {report['platform'].upper()}, loop bodies once, x{n})"
    else:
        flops = "n/a (" + (step.get("xla_flops_note") or "not counted") + ")"
    pred = report["programs"].get("predict") or {}
    pred_total = _gib((pred.get("memory") or {}).get("total")) if pred else ""
    fits = {True: "fits", False: "does not fit", None: "?"}[step.get("fits")]
    if step.get("error") and not step.get("oom"):
        fits = "compile failed"
    return (f"| {variant} | {target} | {args_temps} | {mem_total} | {flops} | {step.get('compile_s', 0):.0f} s | "
            f"{pred_total} | {fits} | {settings_needed(report)} | {report['batch']['per_device']} |")


def write_markdown(results: dict, path: str) -> None:
    lines = ["# AOT compile check: paper variants on TPU / GPU targets", "",
             "Per device. Memory in GiB from `compiled.memory_analysis()`: args / temps (arguments / temporaries),",
             "total (args + temps + non-aliased outputs + code, or XLA's peak) against the device's memory",
             "(v5e: 15.75 GiB usable; GPUs: JAX's default 75% of the device). FLOPs per training step, all devices:",
             "XLA's CPU cost analysis of the step compiled with every scan iteration unrolled, at the",
             "per-device batch of the variant's first target, times its device count (XLA's TPU count takes a",
             "rolled loop's body once; where no CPU count exists the TPU one is shown, marked).",
             "Compile time: the target's train step on this machine.",
             "Predict: the evaluation predict function, one LR image per device.", "",
             "| variant | target | args / temps GiB | total / HBM GiB | FLOPs per step | compile | predict GiB "
             "| fits | settings needed | batch per device |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(results):
        lines.append(table_row(results[key], results))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _cell(row: dict | None) -> tuple[str, str]:
    """(memory cell, compile-time cell) of one variant on one target, for the per-variant table."""
    if row is None:
        return "not run", ""
    report = row.get("report")
    if report is None:
        return not_checked(row), ""
    step = report["programs"]["train_step"]
    mem = step.get("memory") or {}
    if step.get("error") and not step.get("oom"):
        return "compile failed", ""
    verdict = {True: "", False: " **does not fit**", None: " ?"}[step.get("fits")]
    needed = settings_needed(report)
    if needed != "none":
        verdict += f" (needs {needed})"
    shards, n = report["batch"].get("data_shards", report["num_devices"]), report["num_devices"]
    if shards < n:  # the batch over `shards` devices, each shard repeated on n // shards
        verdict += f" ({shards}×{n // shards} mesh)"
    if step.get("compile_options"):  # compiled again with these (the XLA:GPU tiling fallback)
        verdict += " †"
    return f"{_gib(mem.get('total'))}{verdict}", f"{step.get('compile_s', 0):.0f}"


def table_targets(results: dict, targets: list[str]) -> list[str]:
    """The per-variant table's columns: this run's targets, then the default ones and any other
    target with rows in `results` (a rerun of some rows keeps the other columns)."""
    present = {row["target"] for row in results.values()}
    ordered = list(dict.fromkeys([*targets, *DEFAULT_TARGETS, *sorted(present)]))
    return [t for t in ordered if t in targets or t in present]


def write_variant_table(results: dict, targets: list[str], path: str) -> None:
    """One row per paper variant: per-device GiB on each target, FLOPs per step, compile seconds."""
    variants = sorted({row["variant"] for row in results.values()})
    head = " | ".join(f"{t} GiB/device" for t in targets)
    lines = [f"| variant | batch | {head} | TFLOP per step | compile s ({', '.join(targets)}) |",
             "|---|---:|" + "---|" * len(targets) + "---:|---|"]
    for v in variants:
        rows = [results.get(f"{v}@{t}") for t in targets]
        cells = [_cell(r) for r in rows]
        batch = next((r["report"]["batch"]["global"] for r in rows if r and "report" in r), "")
        flops = step_flops(results, v)
        lines.append(f"| `{v}` | {batch} | " + " | ".join(c[0] for c in cells)
                     + f" | {'' if flops is None else f'{flops / 1e12:.1f}'} | " + " / ".join(c[1] or "-" for c in cells) + " |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for aot.json and aot.md")
    p.add_argument("--variants", default="*", help="comma-separated FILE:VARIANT patterns (fnmatch), e.g. 'dan.py:*'")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated targets")
    p.add_argument("--jobs", type=int, default=1, help="rows compiled at once (each is one process)")
    p.add_argument("--timeout", type=float, default=7200, help="seconds per row")
    p.add_argument("--redo", action="store_true", help="recompile rows already in aot.json")
    p.add_argument("--flops", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                   help="count FLOPs with the unrolled CPU compile (True/False)")
    p.add_argument("--predict", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                   help="also compile the predict function (True/False)")
    p.add_argument("--override", action="append", default=[], help="KEY=VALUE config override for every row")
    args = p.parse_args()

    patterns = [v.strip() for v in args.variants.split(",") if v.strip()]
    variants = [v for v in paper_variants() if any(fnmatch.fnmatch(v, pat) for pat in patterns)]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not aot.cuda_plugin_installed():
        skipped = [t for t in targets if not t.startswith("v")]
        if skipped:
            print(f"skipping {', '.join(skipped)}: the CUDA plugin is not installed (pip install 'jax[cuda12]')")
        targets = [t for t in targets if t.startswith("v")]
    os.makedirs(args.out, exist_ok=True)
    json_path, md_path = os.path.join(args.out, "aot.json"), os.path.join(args.out, "aot.md")
    results = {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            results = json.load(f)
    # Target-major order: every variant's first-target row (which also counts the FLOPs) comes first.
    todo = [(v, t) for t in targets for v in variants if args.redo or f"{v}@{t}" not in results]
    print(f"{len(todo)} rows to compile ({len(variants) * len(targets) - len(todo)} already in {json_path})", flush=True)

    def save():
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1, default=str)
        write_markdown(results, md_path)
        write_variant_table(results, table_targets(results, targets), os.path.join(args.out, "aot_variants.md"))

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        # FLOPs are counted once per variant: on its first row still to compile, unless a row has them.
        counts = {v: t for v, t in reversed(todo) if args.flops and step_flops(results, v) is None}
        futures = {pool.submit(run_one, v, t, args, counts.get(v) == t): (v, t) for v, t in todo}
        for future in concurrent.futures.as_completed(futures):
            v, t = futures[future]
            row = future.result()
            keep_flops(results.get(f"{v}@{t}"), row)
            results[f"{v}@{t}"] = row
            save()
            print(table_row(row, results), f"({row['wall_s']:.0f} s)", flush=True)
    save()
    print(f"wrote {md_path} and {json_path}")


if __name__ == "__main__":
    main()
