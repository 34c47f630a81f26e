"""One training program: what `jaxsr.aot` compiles for a config is what `python -m jaxsr.main`
trains (the same StableHLO, on several devices), because both take it from
`jaxsr.train.build_program`."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys
    import jax
    from jaxsr import aot, config_lib, train
    cfg = config_lib.load(sys.argv[1])
    cfg.data.batch_size = 4
    cfg.train.update(dict(steps=1, log_every=1, eval_every=1, checkpoint_every=1, async_checkpoints=False))
    lowered = {}
    build_program = train.build_program

    def recording_build_program(exp, devices=None, **kwargs):
        program = build_program(exp, devices, **kwargs)
        step = program.jitted

        def run(state, hr):  # the step training calls, lowered for the arguments it calls it with
            lowered.setdefault("train", step.lower(state, hr).as_text())
            return step(state, hr)

        return dataclasses.replace(program, jitted=run)

    train.build_program = recording_build_program
    train.train_and_evaluate(cfg, sys.argv[2])
    train.build_program = build_program
    lowered["aot"] = aot.training_program(cfg, jax.devices()).lower().as_text()
    print(json.dumps({"devices": jax.device_count(), "same": lowered["train"] == lowered["aot"],
                      "train_len": len(lowered["train"]), "aot_len": len(lowered["aot"])}))
""")


def test_aot_lowers_the_program_training_runs(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "configs" / "dan.py:tiny"), str(tmp_path / "run")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["train_len"] > 10_000
    assert out["same"], out
