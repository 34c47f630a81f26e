"""What the persistent compilation cache buys a restart: time to the first training step of the
README's main job, cold and restarted from its checkpoint, and time to the first SR image of a
repeated `--mode=eval`, each with the cache and (as the control) without it.

    python benchmarks/restart.py [--config configs/dan.py:cpu] [--set KEY=VALUE ...] [--steps 2] [--no-eval] [--out FILE.json]

`--set` adds `--config.KEY=VALUE` to every run, e.g. a paper variant on the CPU at batch 1:
`--config configs/dan.py:setting1_x4 --set train.require_accelerator=False --set data.batch_size=1
--set "data.train_dirs=('bundled',)"`.

Every run is `python -m jaxsr.main` in a process of its own, as a user (or a preempted job)
starts it, with a fresh workdir and a fresh cache folder per series:

  cold       first run: nothing cached; trains `--steps` steps and checkpoints
  restart    the same command with `--steps` more: resumes from the checkpoint
  eval x2    `--mode=eval` twice on the trained checkpoint

Time to first step = from process start to the trainer's log line of the first step it runs
(`log_every=1`: that line is printed once the step's metrics are on the host), so it covers
interpreter start, imports, the config, the data, restoring, and compiling. Time to first image
= from process start to eval's progress line showing the first SR image(s) out of the network
(after the checkpoint, degrading the set and the first predict program); the whole eval's time
is reported beside it. The series runs once with the cache on and once with
JAXSR_COMPILATION_CACHE=0; medians of `--repeats` series.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args: list[str], env: dict, first: str) -> dict:
    """Run `python -m jaxsr.main ARGS`; seconds to the first output line matching the regex
    `first` (a line ends at "\n" or at the progress line's "\r"), and in total."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "jaxsr.main", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if seen is None and re.search(first, line):
            seen = time.perf_counter() - t0
    code = proc.wait()
    total = time.perf_counter() - t0
    if code:
        raise RuntimeError(f"jaxsr.main {' '.join(args)} exited {code}:\n{''.join(lines[-30:])}")
    if seen is None:
        raise RuntimeError(f"jaxsr.main {' '.join(args)} printed no line matching {first!r}")
    return {"first_s": seen, "total_s": total}


def series(config: str, overrides: list[str], steps: int, cache: bool, evals: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, JAXSR_COMPILATION_CACHE=os.path.join(tmp, "xla") if cache else "0",
                   PYTHONUNBUFFERED="1")
        # eval's Set5: the benchmark sets beside the checkout unless JAXSR_DATA says otherwise
        env.setdefault("JAXSR_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))
        workdir = os.path.join(tmp, "run")
        common = [f"--config={config}", f"--workdir={workdir}", "--config.train.log_every=1",
                  "--config.train.eval_every=100000", *(f"--config.{o}" for o in overrides)]
        cold = run([*common, f"--config.train.steps={steps}", f"--config.train.checkpoint_every={steps}"], env,
                   r"^step 1/\d+ ")
        restart = run([*common, f"--config.train.steps={2 * steps}"], env, rf"^step {steps + 1}/\d+ ")
        if not evals:
            return {"cold": cold, "restart": restart}
        runs = [run([*common, "--mode=eval"], env, r"\] [1-9]\d*/\d+, ") for _ in range(2)]
    return {"cold": cold, "restart": restart, "eval_first": runs[0], "eval_second": runs[1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dan.py:cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the series with the cache off (halves the time of a long-compiling config)")
    p.add_argument("--no-eval", dest="evals", action="store_false",
                   help="time the training restart only (a paper variant's eval of Set5 takes minutes on a CPU)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import platform
    print(f"# {platform.platform()} | {os.cpu_count()} CPUs | python {platform.python_version()} | {args.config} "
          f"{' '.join(args.set)}")
    results = {}
    for _ in range(args.repeats):  # interleaved: cache on, then off, per repeat
        for cache in (True, False) if args.control else (True,):
            results.setdefault("cache" if cache else "no_cache", []).append(series(args.config, args.set, args.steps, cache, args.evals))

    def median(name, run_name, key):
        values = [r[run_name][key] for r in results[name]]
        return statistics.median(values)

    print("| | cache on | cache off |\n|---|---|---|")
    rows = [("time to first step, cold", "cold", "first_s"),
            ("time to first step, restart", "restart", "first_s")]
    rows += [("--mode=eval, first: time to first image", "eval_first", "first_s"),
             ("--mode=eval, second: time to first image", "eval_second", "first_s"),
             ("--mode=eval, first: whole run", "eval_first", "total_s"),
             ("--mode=eval, second: whole run", "eval_second", "total_s")] if args.evals else []
    summary = {}
    for label, run_name, key in rows:
        on = median("cache", run_name, key)
        off = median("no_cache", run_name, key) if args.control else None
        summary.setdefault(run_name, {})[key] = {"cache": on, "no_cache": off}
        print(f"| {label} | {on:.1f} s | {'not run' if off is None else f'{off:.1f} s'} |")
    ratio_restart = summary["restart"]["first_s"]["cache"] / summary["cold"]["first_s"]["cache"]
    ratios = {"restart_over_cold": ratio_restart}
    if args.evals:
        ratios["second_eval_over_first_image"] = (summary["eval_second"]["first_s"]["cache"]
                                                  / summary["eval_first"]["first_s"]["cache"])
        ratios["second_eval_over_first_whole"] = (summary["eval_second"]["total_s"]["cache"]
                                                  / summary["eval_first"]["total_s"]["cache"])
    print(f"cache on: restart / cold (first step) {ratio_restart:.2f}" + (
        f"; second / first eval: first image {ratios['second_eval_over_first_image']:.2f}, whole run "
        f"{ratios['second_eval_over_first_whole']:.2f}" if args.evals else ""))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": args.config, "overrides": args.set, "runs": results, "summary": summary, **ratios},
                      f, indent=2)

if __name__ == "__main__":
    main()
