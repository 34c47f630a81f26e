"""jaxsr against the PyTorch reference of every seed model, side by side on this machine.

    python benchmarks/vs_torch.py                    # x4 paper widths: forward LR 64² batch 1, train LR 32² batch 2
    python benchmarks/vs_torch.py --quick            # reduced widths and sizes, a couple of minutes
    python benchmarks/vs_torch.py --models danv1,dssr --rounds 7 --out vs_torch.json

The PyTorch models are the reference modules of the conversion tests (`tests/test_convert*.py`,
official state-dict key names and layer order). Each one gets random weights, which go into
jaxsr through `jaxsr.torch_import.convert_state_dict(state_dict, model, spec.official)`, so both
sides run the same weights on the same inputs (the largest forward difference is printed).

* forward: the inference call — PyTorch `net(lr)` under `no_grad`; jaxsr the model's jitted
  `predict` (`ModelSpec.jit_predict`): the last SR (DSSR: the mean of its steps).
* train step: L1 between that same output and an HR batch, backward, one Adam step — PyTorch
  `zero_grad / backward / step`; jaxsr one jitted `value_and_grad` + `optax.adam` update with
  the parameters and optimizer state donated, as `jaxsr.train` does.

Timing: warm-up calls first, then `--rounds` rounds, each timing one PyTorch call and one jaxsr
call in turn (so machine noise hits both sides alike); the medians are reported. jaxsr's compile
time (`lower + compile`) is measured separately and excluded. ratio = PyTorch time / jaxsr time
(> 1: jaxsr faster).

PyTorch runs as its users run it: in a worker process of its own, with PyTorch's default threads
and OpenMP settings and none of jaxsr's process-wide settings (its environment has no
GLIBC_TUNABLES from jaxsr). `--torch-omp-passive` sets OMP_WAIT_POLICY=PASSIVE for PyTorch, as
this benchmark once did: on this machine that slowed the official DANv2 training step from 0.97
to 1.57 s, so it flattered jaxsr. `--torch-shares-tuning` gives the worker jaxsr's allocator
settings too.

jaxsr runs as `python -m jaxsr.main` runs it: `jaxsr.cpu.setup()` (allocator restart, inline
dispatch, the native convolution kernels where they can be built; `--malloc-defaults`,
`--async-dispatch` and `--no-native` leave one out), compiled with `jaxsr.jit` (the CPU compile
options; `--xla-defaults` compiles with plain `jax.jit` instead). Its train step differentiates
what the loss reaches, as `jaxsr.train` does: the model's training forward (`ModelSpec.forward`)
with a loss on the last SR only, the loss the PyTorch side takes (DAN: the iterations before the
last run without a backward pass, as PyTorch's autograd does behind the official `detach()`s; the
reference `TorchDAN` returns per-iteration lists as the official network does, so its backward
runs through the last iteration only). docs/benchmarks.md times each reference module against its
official repository.
Each model runs in a process of its own (`--same-process` runs them all in this one).
The last line reads `min ratio vs PyTorch: forward <X.XX>x, train step <Y.YY>x`.

The ratios depend on the CPU. jaxsr's native convolution kernels run only where the CPU has
AVX-512 (`avx512f`); elsewhere they are not registered and XLA's convolutions run (PyTorch's
oneDNN picks its own code for the CPU either way). On a 2-core AMD EPYC with AVX2 only, USRNet's
training step was 0.75-0.79x and its forward pass 1.00-1.10x (README). So the header, the table's
caption and the JSON (`cpu`) give the CPU model, whether it has AVX-512 and AVX2, and whether the
native kernels were registered in jaxsr's process.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import importlib.util
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Only on request (--torch-omp-passive, read before torch loads): PyTorch's users run its defaults.
if "--torch-omp-passive" in sys.argv:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

import torch  # noqa: E402

import jaxsr  # noqa: E402
from jaxsr import models, platform as jaxsr_platform, torch_import  # noqa: E402
from jaxsr.cpu import native, process  # noqa: E402 - each setting on its own flag
from jaxsr.models import dan, dssr, kxnet, usrnet  # noqa: E402

TESTS = HERE.parent / "tests"
SCALE = 4
LEARNING_RATE = 1e-4
JIT = None  # jaxsr.jit, or jax.jit with --xla-defaults (set in main)


def cpu_features() -> dict:
    """The host CPU's model and the vector extensions the figures depend on (Linux /proc/cpuinfo;
    elsewhere the flags read False)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(),
            "avx512f": "avx512f" in flags, "avx2": "avx2" in flags}


def describe_cpu(cpu: dict) -> str:
    yes = lambda flag: "yes" if flag else "no"
    return (f"CPU {cpu['model']} (AVX-512: {yes(cpu['avx512f'])}, AVX2: {yes(cpu['avx2'])}); "
            f"jaxsr native convolution kernels: {cpu['native_kernel']}")


def native_kernel_state(registered: bool, asked_off: bool, cpu: dict) -> str:
    if registered:
        return "registered (ran)"
    if asked_off:
        return "not used (--no-native)"
    if not cpu["avx512f"]:
        return "not registered: this CPU has no AVX-512 (XLA's convolutions ran)"
    return "not registered: the build or registration failed (XLA's convolutions ran)"


def reference_module(name: str):
    """A conversion-test module (holds the PyTorch reference classes), loaded by path."""
    spec = importlib.util.spec_from_file_location(f"_vs_torch_{name}", TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass
class Case:
    """One model on both sides. `torch_out(net, lr, extra)` and `jax_out(params, lr, extra)` return
    the model's output image (NCHW tensor / NHWC array); `extra` are non-image inputs."""
    name: str
    net: Any                      # torch.nn.Module
    model: Any                    # flax module
    params: Any                   # converted from net's state dict
    torch_out: Callable
    jax_out: Callable
    torch_extra: Callable = lambda n: ()   # batch size -> extra torch inputs
    jax_extra: Callable = lambda n: ()     # batch size -> extra jax inputs
    jax_train_out: Callable | None = None  # the training forward's last SR (default: jax_out)


def _orthonormal(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, cols)))
    return q.astype(np.float32)


def _for_cpu(model):
    """The model as `jaxsr.models.create(cfg, "cpu")` builds it: iterations unrolled."""
    if "scan_unroll" in type(model).__dataclass_fields__:
        return model.clone(scan_unroll=jaxsr.cpu.scan_unroll("cpu"))
    return model


def _convert(net, model, name):
    sd = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    return torch_import.convert_state_dict(sd, model, models.get(name).official)


def _predict_fn(name, model):
    spec = models.get(name)
    return lambda params, lr, *extra: spec.predict(model, {"params": params}, lr, **dict(zip(("kernel", "noise_sigma"), extra)))[0]


def build_dan(version: int, quick: bool) -> Case:
    ref = reference_module("test_convert")
    name = f"danv{version}"
    if quick:
        fields = (dict(restorer_features=16, restorer_blocks=4, estimator_features=16, estimator_blocks=2) if version == 1
                  else dict(restorer_features=16, restorer_blocks=2, restorer_groups=2, estimator_features=16,
                            estimator_blocks=2))
        size, iters = 11, 2
    else:  # the published x4 models
        fields = (dict(restorer_features=64, restorer_blocks=40, estimator_features=32, estimator_blocks=5) if version == 1
                  else dict(restorer_features=64, restorer_blocks=10, restorer_groups=5, estimator_features=32,
                            estimator_blocks=5))
        size, iters = 21, 4
    matrix = _orthonormal(size * size, 10)
    torch.manual_seed(0)
    net = ref.TorchDAN(version, SCALE, matrix, fields=fields, iters=iters)
    model = _for_cpu(dan.MODELS[name](scale=SCALE, kernel_size=size, code_length=10, num_iters=iters,
                                      pca_matrix=matrix, **fields))
    params, _ = _convert(net, model, name)
    # the training forward for a loss on the last SR (jaxsr.models.dan.forward with the default weights)
    train_out = lambda p, lr: model.apply({"params": p}, lr, train_from=iters - 1)["sr"][-1]
    return Case(name, net, model, params, lambda net, lr: net(lr)[0][-1], _predict_fn(name, model),
                jax_train_out=train_out)


def build_kxnet(quick: bool) -> Case:
    ref = reference_module("test_convert_kxnet")
    size, stages, aux_x, aux_k = (11, 3, 8, 8) if quick else (21, 19, 32, 24)
    kernel_map = kxnet.auxiliary_kernel_map(size, "aniso")
    kernel_map = np.resize(kernel_map, (aux_k, size, size))
    torch.manual_seed(0)
    net = ref.TorchKXNet(SCALE, size, kernel_map, stages=stages, aux_x=aux_x)
    model = _for_cpu(kxnet.KXNet(scale=SCALE, kernel_size=size, num_stages=stages, aux_x_features=aux_x,
                                 aux_k_features=aux_k))
    params, _ = _convert(net, model, "kxnet")
    return Case("kxnet", net, model, params, lambda net, lr: net(lr)[0][-1], _predict_fn("kxnet", model))


def build_dssr(quick: bool) -> Case:
    ref = reference_module("test_convert_dssr")
    fields = dict(features=32, structure_blocks=3, refine_blocks=2, num_iters=2) if quick else \
        dict(features=128, structure_blocks=15, refine_blocks=5, num_iters=4)
    torch.manual_seed(0)
    net = ref.TorchDSSR(SCALE, ch=fields["features"], feat_blocks=fields["structure_blocks"],
                        refine_blocks=fields["refine_blocks"], steps=fields["num_iters"])
    model = _for_cpu(dssr.DSSR(scale=SCALE, **fields))
    params, _ = _convert(net, model, "dssr")
    return Case("dssr", net, model, params, lambda net, lr: net(lr)[2], _predict_fn("dssr", model))


def build_usrnet(quick: bool) -> Case:
    ref = reference_module("test_convert_usrnet")
    fields = dict(num_iters=3, features=(16, 32, 64, 64), num_blocks=1, hyper_features=16) if quick else \
        dict(usrnet.OFFICIAL_VARIANTS["usrnet"])
    torch.manual_seed(0)
    net = ref.TorchUSRNet(fields["num_iters"], fields["hyper_features"], list(fields["features"]), fields["num_blocks"])
    model = _for_cpu(usrnet.USRNet(scale=SCALE, **fields))
    params, _ = _convert(net, model, "usrnet")
    ksize = 21

    def kernels(n):
        ax = np.arange(ksize) - ksize // 2
        k = np.exp(-(ax[:, None] ** 2 / 8.0 + ax[None, :] ** 2 / 4.0)).astype(np.float32)
        return np.broadcast_to(k / k.sum(), (n, ksize, ksize)).copy(), np.full((n,), 5.0, np.float32)

    def torch_extra(n):  # convolution PSF (the flipped correlation kernel) and sigma in [0, 1] units
        k, sigma = kernels(n)
        return (torch.from_numpy(k[:, None, ::-1, ::-1].copy()), torch.from_numpy(sigma / 255.0).view(-1, 1, 1, 1))

    def jax_extra(n):
        k, sigma = kernels(n)
        return jnp.asarray(k), jnp.asarray(sigma)

    return Case("usrnet", net, model, params, lambda net, lr, k, sigma: net(lr, k, SCALE, sigma),
                _predict_fn("usrnet", model), torch_extra, jax_extra)


BUILDERS: dict[str, Callable[[bool], Case]] = {
    "danv1": lambda q: build_dan(1, q), "danv2": lambda q: build_dan(2, q), "kxnet": build_kxnet,
    "dssr": build_dssr, "usrnet": build_usrnet}


# ----------------------------------------------------------------------------- the two sides
def images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((n, size, size, 3), dtype=np.float32),
            rng.random((n, SCALE * size, SCALE * size, 3), dtype=np.float32))


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def torch_forward(case: Case, lr: np.ndarray):
    lr_t, extra = nchw(lr), case.torch_extra(lr.shape[0])
    case.net.eval()

    def run():
        with torch.no_grad():
            return case.torch_out(case.net, lr_t, *extra)
    return run


def torch_train_step(case: Case, lr: np.ndarray, hr: np.ndarray):
    lr_t, hr_t, extra = nchw(lr), nchw(hr), case.torch_extra(lr.shape[0])
    case.net.train()
    opt = torch.optim.Adam(case.net.parameters(), lr=LEARNING_RATE)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = (case.torch_out(case.net, lr_t, *extra) - hr_t).abs().mean()
        loss.backward()
        opt.step()
        return loss.item()
    return run


def jax_forward(case: Case, lr: np.ndarray):
    lr_j, extra = jnp.asarray(lr), case.jax_extra(lr.shape[0])
    params = jax.device_put(case.params)
    fn = JIT(case.jax_out)
    compile_s, compiled = common.time_compile(fn, params, lr_j, *extra)
    return compile_s, lambda: jax.block_until_ready(compiled(params, lr_j, *extra))


def make_train_step(case: Case, tx):
    out = case.jax_train_out or case.jax_out

    def loss_fn(params, lr, hr, extra):
        return jnp.mean(jnp.abs(out(params, lr, *extra) - hr))

    def step(params, opt_state, lr, hr, extra):
        loss, grads = jax.value_and_grad(loss_fn)(params, lr, hr, extra)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


def jax_train_step(case: Case, lr: np.ndarray, hr: np.ndarray):
    tx = optax.adam(LEARNING_RATE)
    lr_j, hr_j, extra = jnp.asarray(lr), jnp.asarray(hr), case.jax_extra(lr.shape[0])
    state = [jax.tree.map(jnp.array, case.params)]
    state.append(tx.init(state[0]))
    step = JIT(make_train_step(case, tx), donate_argnums=(0, 1))
    compile_s, compiled = common.time_compile(step, state[0], state[1], lr_j, hr_j, extra)

    def run():
        state[0], state[1], loss = compiled(state[0], state[1], lr_j, hr_j, extra)
        return float(loss)  # waits for the step
    return compile_s, run


def minor_faults() -> int:
    """Page faults this process has taken so far (first touches of fresh memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn: Callable) -> Callable[[], tuple[float, int]]:
    """fn as a call that returns (wall seconds, page faults taken during it)."""
    def run():
        faults, t = minor_faults(), time.perf_counter()
        fn()
        return time.perf_counter() - t, minor_faults() - faults
    return run


# A warm-up call that takes more page faults than this grew its process's heap (a steady-state
# step takes none); warm-up goes on until neither side does, for at most --max-warmup calls.
WARM_FAULTS = 100


def interleaved(torch_fn, jax_fn, rounds: int, warmup: int, max_warmup: int) -> dict[str, Any]:
    """Medians (s) of `rounds` alternating timed calls, after warm-up calls of each side, with every
    timed call's seconds and page faults. `torch_fn` and `jax_fn` return (seconds, page faults).

    Warm-up: `warmup` calls of each side, and more (up to `max_warmup` in all) while a side's last
    call still page-faulted (its heap was still growing to the step's high-water mark)."""
    warm = 0
    while True:
        faults = [torch_fn()[1], jax_fn()[1]]
        warm += 1
        if warm >= max_warmup or (warm >= warmup and max(faults) <= WARM_FAULTS):
            break
    times: dict[str, list] = {"torch": [], "jax": []}
    faults = {"torch": [], "jax": []}
    for r in range(rounds):
        order = (("torch", torch_fn), ("jax", jax_fn)) if r % 2 == 0 else (("jax", jax_fn), ("torch", torch_fn))
        for side, fn in order:
            seconds, n = fn()
            times[side].append(seconds)
            faults[side].append(n)
    return {"torch_s": statistics.median(times["torch"]), "jax_s": statistics.median(times["jax"]),
            "rounds_s": times, "page_faults": faults, "warmup_calls": warm}


class TorchWorker:
    """PyTorch's side of one model in a process of its own (this script with --torch-worker): it
    builds the same case (the same seeded weights and inputs) and runs one forward or training call
    per request, timing it itself. A training run never shares its process with the other
    framework; sharing one glibc heap, each side's allocations between the other's steps split the
    free blocks the other reuses, and jaxsr's heap kept growing (2000 huge-page faults, 9-19 s of
    kernel time in a 12 s USRNet step, in rounds after warm-up)."""

    def __init__(self, name: str, args):
        argv = [sys.executable, os.path.abspath(__file__), "--torch-worker", name,
                "--forward-size", str(args.forward_size), "--forward-batch", str(args.forward_batch),
                "--train-size", str(args.train_size), "--train-batch", str(args.train_batch)]
        argv += [flag for flag, on in (("--quick", args.quick), ("--torch-omp-passive", args.torch_omp_passive)) if on]
        env = dict(os.environ)
        if not args.torch_shares_tuning:  # PyTorch as its users run it: none of jaxsr's process settings
            env.pop("GLIBC_TUNABLES", None)
            env[process.MALLOC_TUNING_ENV] = "0"
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if self._reply() != "ready":
            raise RuntimeError("the PyTorch worker did not start")

    def _reply(self) -> str:
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"the PyTorch worker exited (code {self.proc.wait()})")
        return line

    def call(self, part: str) -> tuple[float, int]:
        self.proc.stdin.write(part + "\n")
        self.proc.stdin.flush()
        seconds, faults = self._reply().split()
        return float(seconds), int(faults)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def torch_worker(name: str, args) -> None:
    """The --torch-worker loop: read "forward" / "train" lines, answer "<seconds> <page faults>"."""
    protocol, sys.stdout = sys.stdout, sys.stderr  # anything else printed goes to stderr
    case = BUILDERS[name](args.quick)  # PyTorch's default threads and OpenMP settings
    lr_f, _ = images(args.forward_batch, args.forward_size, seed=1)
    lr_t, hr_t = images(args.train_batch, args.train_size, seed=2)
    calls = {"forward": timed(torch_forward(case, lr_f)), "train": timed(torch_train_step(case, lr_t, hr_t))}
    print("ready", file=protocol, flush=True)
    for line in sys.stdin:
        seconds, faults = calls[line.strip()]()
        print(f"{seconds:.6f} {faults}", file=protocol, flush=True)


def max_rel_diff(case: Case, lr: np.ndarray, jax_fn) -> float:
    """Largest |jaxsr - PyTorch| of the forward output over max |PyTorch|."""
    with torch.no_grad():
        case.net.eval()
        want = case.torch_out(case.net, nchw(lr), *case.torch_extra(lr.shape[0])).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(jax_fn())
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-12))


def run_case(case: Case, args) -> dict:
    row: dict[str, Any] = {"model": case.name}
    lr_f, _ = images(args.forward_batch, args.forward_size, seed=1)
    row["forward_compile_s"], jfwd = jax_forward(case, lr_f)
    row["max_rel_diff"] = max_rel_diff(case, lr_f, jfwd)
    worker = None if args.torch_in_process else TorchWorker(case.name, args)
    lr_t, hr_t = images(args.train_batch, args.train_size, seed=2)
    try:
        for part in ("forward", "train"):
            if part not in args.parts:
                continue
            if part == "forward":
                jax_fn = jfwd
            else:
                row["train_compile_s"], jax_fn = jax_train_step(case, lr_t, hr_t)
            if worker:
                torch_call = lambda p=part: worker.call(p)
            else:
                torch_call = timed(torch_forward(case, lr_f) if part == "forward" else torch_train_step(case, lr_t, hr_t))
            result = interleaved(torch_call, timed(jax_fn), args.rounds, args.warmup, args.max_warmup)
            row[f"{part}_torch_s"], row[f"{part}_jax_s"] = result["torch_s"], result["jax_s"]
            row[f"{part}_rounds_s"], row[f"{part}_page_faults"] = result["rounds_s"], result["page_faults"]
            row[f"{part}_warmup_calls"] = result["warmup_calls"]
    finally:
        if worker:
            worker.close()
    return row


def ratio(row, part):
    key = f"{part}_torch_s"
    return row[key] / row[f"{part}_jax_s"] if key in row else None


def print_table(rows: list[dict], args, cpu: dict) -> None:
    print(f"\n{describe_cpu(cpu)}")
    print(f"\n| x{SCALE} | forward LR {args.forward_size}², batch {args.forward_batch}: PyTorch / jaxsr (ratio) "
          f"| train step LR {args.train_size}², batch {args.train_batch}: PyTorch / jaxsr (ratio) "
          f"| jaxsr compile fwd / train | max rel. diff |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        cells = []
        for part in ("forward", "train"):
            if f"{part}_torch_s" in row:
                cells.append(f"{1e3 * row[f'{part}_torch_s']:.0f} / {1e3 * row[f'{part}_jax_s']:.0f} ms "
                             f"(**{ratio(row, part):.2f}x**)")
            else:
                cells.append("–")
        compile_s = " / ".join(f"{row[k]:.1f} s" if k in row else "–" for k in ("forward_compile_s", "train_compile_s"))
        print(f"| {row['model']} | {cells[0]} | {cells[1]} | {compile_s} | {row['max_rel_diff']:.1e} |")


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """argv less the given flags and their values (either "--flag value" or "--flag=value")."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif not any(arg.startswith(f + "=") for f in flags):
            out.append(arg)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(BUILDERS), help=f"comma-separated subset of {list(BUILDERS)}")
    p.add_argument("--quick", action="store_true", help="reduced widths and image sizes")
    p.add_argument("--parts", default="forward,train")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per side (default 7; 5 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up calls per side, at least")
    p.add_argument("--max-warmup", type=int, default=6,
                   help="warm-up calls per side at most, while a call still page-faults (its heap grows)")
    p.add_argument("--forward-size", type=int, default=None, help="LR side of the forward input (64; quick 24)")
    p.add_argument("--forward-batch", type=int, default=1)
    p.add_argument("--train-size", type=int, default=None, help="LR side of the training input (32; quick 16)")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--out", default=None, help="write the rows as JSON")
    p.add_argument("--no-native", action="store_true",
                   help="without jaxsr.cpu.native: XLA convolutions, stride-1 kernel gradients as XLA matmuls of stacked shifts")
    p.add_argument("--xla-defaults", action="store_true",
                   help="compile jaxsr with plain jax.jit (XLA's default options) instead of jaxsr.jit")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="leave glibc alone in jaxsr's process: no heap tunables, no huge pages")
    p.add_argument("--torch-omp-passive", action="store_true",
                   help="OMP_WAIT_POLICY=PASSIVE for PyTorch (not its default; it slows PyTorch here)")
    p.add_argument("--torch-shares-tuning", action="store_true",
                   help="give PyTorch's worker jaxsr's allocator settings too (GLIBC_TUNABLES)")
    p.add_argument("--async-dispatch", action="store_true",
                   help="keep JAX's asynchronous CPU dispatch (jaxsr.main runs CPU executions inline)")
    p.add_argument("--torch-in-process", action="store_true",
                   help="run PyTorch in this process (default: a worker process of its own, rounds still interleaved)")
    p.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--same-process", action="store_true",
                   help="run every model in this process (default: one child process per model)")
    args = p.parse_args(argv)
    global JIT
    JIT = jax.jit if args.xla_defaults else jaxsr.jit
    if args.torch_worker:  # PyTorch's process: none of jaxsr's settings
        args.forward_size = args.forward_size or (24 if args.quick else 64)
        args.train_size = args.train_size or (16 if args.quick else 32)
        torch_worker(args.torch_worker, args)
        return
    # jaxsr's process, set up as `python -m jaxsr.main` sets it up (jaxsr.cpu.setup), less what the flags leave out
    if not args.malloc_defaults and __name__ == "__main__":
        process.restart_with_malloc_tuning()
    if not args.async_dispatch:
        process.run_cpu_executions_inline()
    heap = False if args.malloc_defaults else process.keep_large_buffers_in_heap()
    native_kernel = False if args.no_native else native.load(build_missing=True)
    args.rounds = args.rounds or (5 if args.quick else 7)
    args.forward_size = args.forward_size or (24 if args.quick else 64)
    args.train_size = args.train_size or (16 if args.quick else 32)
    args.parts = tuple(args.parts.split(","))
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(BUILDERS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {list(BUILDERS)}")

    machine = common.print_machine()
    features = cpu_features()
    cpu = dict(features, native_kernel=native_kernel_state(native_kernel, args.no_native, features),
               native_kernel_registered=native_kernel)
    print("# load average at start (1/5/15 min): %.1f %.1f %.1f" % os.getloadavg())
    print(f"# PyTorch {torch.__version__}, default threads ({torch.get_num_threads()} here), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY') or 'unset (PyTorch default)'}, "
          f"{'jaxsr allocator settings' if args.torch_shares_tuning else 'glibc defaults'} | x{SCALE} "
          f"{'reduced widths (--quick)' if args.quick else 'paper widths'} | {args.rounds} interleaved rounds, "
          f"{args.warmup}-{args.max_warmup} warm-up calls (until no page faults), medians; jaxsr compile excluded; "
          f"PyTorch {'in this process' if args.torch_in_process else 'in a worker process of its own'}")
    # The figures depend on the CPU: the native kernels (stride-1 forward and kernel gradient) need AVX-512.
    print(f"# {describe_cpu(cpu)}")
    options = {} if args.xla_defaults else jaxsr_platform.compiler_options("cpu")
    print(f"# jaxsr compile options: {options or 'XLA defaults'}; "
          f"large buffers from the heap: {heap}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')}; CPU executions "
          f"{'dispatched asynchronously' if args.async_dispatch else 'inline'}")
    rows = []
    if len(names) > 1 and not args.same_process:
        # One child per model (same flags): what a model leaves in the heap and XLA's caches does
        # not slow the next one down. Children print their own rounds; their rows come back as JSON.
        argv = list(sys.argv[1:] if argv is None else argv)
        for name in names:
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "rows.json")
                subprocess.run([sys.executable, os.path.abspath(__file__), *_without(argv, ("--models", "--out")),
                                "--models", name, "--out", out, "--same-process"], check=True)
                with open(out) as f:
                    rows += json.load(f)["rows"]
    for name in (names if not rows else []):
        case = BUILDERS[name](args.quick)
        row = run_case(case, args)
        rows.append(row)
        print(f"# {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)
        for part in ("forward", "train"):
            if f"{part}_rounds_s" in row:
                print(f"#   {part} rounds (s): " + "; ".join(
                    f"{side} " + " ".join(f"{t:.2f}" for t in ts) for side, ts in row[f"{part}_rounds_s"].items())
                    + f" | page faults: " + "; ".join(f"{side} " + " ".join(map(str, n))
                                                     for side, n in row[f"{part}_page_faults"].items())
                    + f" | warm-up calls {row[f'{part}_warmup_calls']}")
    print_table(rows, args, cpu)
    print("# load average at the end (1/5/15 min): %.1f %.1f %.1f" % os.getloadavg())
    common.write_json(args.out, {"machine": machine, "cpu": cpu, "torch": torch.__version__, "args": vars(args),
                                 "rows": rows})
    fwd = [ratio(r, "forward") for r in rows if "forward_torch_s" in r]
    train = [ratio(r, "train") for r in rows if "train_torch_s" in r]
    fmt = lambda v: f"{min(v):.2f}x" if v else "n/a"
    print(f"# {describe_cpu(cpu)}")
    print(f"min ratio vs PyTorch: forward {fmt(fwd)}, train step {fmt(train)}")


if __name__ == "__main__":
    main()
