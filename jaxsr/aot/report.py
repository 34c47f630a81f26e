"""The AOT check's report as text, and the command's exit status."""
from __future__ import annotations

from jaxsr.aot.measure import cpu_only_calls
from jaxsr.aot.targets import GIB


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / GIB:.3f} GiB"


def _flops(n) -> str:
    return f"{n:.4g}"


def _program_header(report: dict, key: str, p: dict) -> str:
    b, n = report["batch"], report["num_devices"]
    if key == "predict":
        per_device = p["lr_shape"][0] // n
        header = f"predict: LR {'x'.join(map(str, p['lr_shape']))} ({per_device} per device); {p['lr_choice']}"
        if p.get("eval_programs"):
            header += f"\n  {p['eval_programs']}"
        if per_device < p.get("eval_max_batch", 0):
            header += (f"\n  (jaxsr.evaluate runs batches of up to eval.max_batch={p['eval_max_batch']} on one "
                       f"device: --eval_per_device={p['eval_max_batch']} checks that)")
        return header
    if key == "train_step_remat":
        return "train step again with model.remat=True"
    settings = ", ".join(f"model.{k}={v}" for k, v in report["settings"].items())
    shards = b.get("data_shards", n)
    split = "" if shards == n else f", split {shards} ways: each shard computed on {n // shards} devices"
    return (f"train step: global batch {b['global']} ({b['per_device']} per device{split}), HR "
            f"{'x'.join(map(str, b['hr_shape'][1:3]))} uint8; {settings}")


def _memory_lines(p: dict, budget: int) -> list[str]:
    lines, mem = [], p.get("memory") or {}
    if mem and not mem.get("from_error") and "error" not in mem:
        lines.append(f"  arguments           {_gib(mem['argument'])}")
        lines.append(f"  temporaries         {_gib(mem['temp'])}")
        lines.append(f"  outputs             {_gib(mem['output'])} ({_gib(mem['alias'])} aliased to donated arguments)")
        lines.append(f"  generated code      {_gib(mem['generated_code'])}")
        if mem.get("peak"):
            lines.append(f"  XLA peak            {_gib(mem['peak'])}")
    if mem.get("total") is not None:
        src = (" (the temporaries alone, from the compiler's error)" if mem.get("from_error") and "temp" in mem
               else " (from the compiler's error)" if mem.get("from_error") else "")
        lines.append(f"  total per device    {_gib(mem['total'])} of {_gib(budget)} "
                     f"({100 * mem['total'] / budget:.0f}%){src}")
    elif mem.get("error"):
        lines.append(f"  memory              n/a ({mem['error']})")
    return lines


def _flop_lines(report: dict, p: dict) -> list[str]:
    lines, platform = [], report["platform"].upper()
    if "xla_flops" in p:
        if p["xla_flops"] is None:
            lines.append(f"  FLOPs (XLA {platform} cost analysis)   n/a ({p['xla_flops_note']})")
        else:
            lines.append(f"  FLOPs (XLA {platform} cost analysis, a rolled loop's body counted once, "
                         f"per device)   {_flops(p['xla_flops'])}")
    cpu = p.get("cpu_flops")
    if cpu is not None:
        shards = report["batch"].get("data_shards", report["num_devices"])
        if cpu.get("flops") is None:
            lines.append(f"  FLOPs per step (XLA CPU count, loops unrolled, per device)   n/a ({cpu['note']})")
        else:
            extra = f"; {cpu['note']}" if cpu.get("note") else ""
            lines.append(f"  FLOPs per step (XLA CPU count, loops unrolled, per device)   {_flops(cpu['flops'])} "
                         f"(x{shards} shards = {_flops(cpu['flops'] * shards)} per step; counted in "
                         f"{cpu['compile_s']:.0f} s{extra})")
    return lines


def _program_lines(report: dict, key: str, p: dict) -> list[str]:
    cached = " (loaded from the persistent compilation cache, not compiled; JAXSR_COMPILATION_CACHE=0 times a compile)"
    lines = [_program_header(report, key, p),
             f"  compile time        {p.get('compile_s', 0):.1f} s{cached if p.get('from_cache') else ''}"]
    if p.get("host_peak_rss"):
        lines.append(f"  host memory         {_gib(p['host_peak_rss'])} (this process's peak RSS after the compile)")
    if p.get("error"):
        lines.append(f"  compile error       {p['error']}")
    lines += _memory_lines(p, report["memory_bytes"])
    lines += _flop_lines(report, p)
    if p.get("note"):
        lines.append(f"  note                {p['note']}")
    bad = cpu_only_calls(p.get("custom_calls", []))
    if bad:
        lines.append(f"  CPU-only custom calls in the program: {', '.join(bad)} (this program cannot run on "
                     f"{report['target']})")
    verdict = {True: "fits", False: "does not fit", None: "unknown (no memory figures)"}[p.get("fits")]
    if p.get("error") and not p.get("oom"):
        verdict = "compile failed"
    lines.append(f"  -> {verdict}")
    return lines


def format_report(report: dict, title: str = "") -> str:
    budget = report["memory_bytes"]
    lines = [f"jaxsr AOT check{': ' + title if title else ''} ({report['model']}) for {report['target']}: "
             f"{report['num_devices']} x {report['device_kind']}, {_gib(budget)} per device "
             f"({report['memory_source']})"]
    for key, p in report["programs"].items():
        lines += _program_lines(report, key, p)
    if report.get("advice"):
        lines.append("The train step does not fit. What would help:")
        lines += [f"  - {tip}" for tip in report["advice"]]
        remat = report["programs"].get("train_step_remat")
        if remat is not None:
            total = (remat.get("memory") or {}).get("total")
            state = {True: "fits", False: "does not fit", None: "unknown"}[remat.get("fits")]
            lines.append(f"  checked: with model.remat=True the step {state}"
                         + (f" ({_gib(total)} of {_gib(budget)})" if total is not None else ""))
    verdict = "fits" if report["fits"] else "does not fit"
    if report["failed"]:
        verdict = f"could not be checked ({', '.join(report['failed'])} failed to compile)"
    lines.append(f"verdict: {verdict} on {report['target']}")
    return "\n".join(lines)


def exit_code(report: dict) -> int:
    if report["failed"]:
        return 2
    return 0 if report["fits"] else 1
