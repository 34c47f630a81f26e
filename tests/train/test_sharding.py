"""The device mesh: a global batch that does not split over every device (KXNet's paper batch,
12, on 8 chips) is split over as many as it divides, each shard repeated on a group of devices,
and the training step computes what it computes on one device."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from jaxsr import config_lib, experiment, sharding

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("batch, devices, per_host, ways", [
    (64, 8, None, 8), (12, 8, None, 4), (12, 8, 8, 4), (6, 4, 2, 2), (7, 4, None, 1), (12, 4, 4, 4)])
def test_data_parallelism(batch, devices, per_host, ways):
    assert sharding.data_parallelism(batch, devices, per_host) == ways


def test_batch_that_no_host_can_split_names_the_key():
    # 8 hosts of one device each: a shard repeated on 2 devices would span two hosts
    with pytest.raises(ValueError, match=r"data.batch_size \(12\) must be divisible by the number of devices \(8\)"):
        sharding.data_parallelism(12, 8, 1)
    cfg = config_lib.load(REPO / "configs" / "kxnet.py", "tiny")
    cfg.data.batch_size = 12
    with pytest.raises(ValueError, match="data.batch_size"):
        experiment.resolve(cfg, num_devices=8, devices_per_host=1)
    experiment.resolve(cfg, num_devices=8, devices_per_host=8)  # one host: split 4 ways, fine


SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jaxsr import config_lib, experiment, sharding, train
    cfg = config_lib.load(sys.argv[1], "tiny")
    cfg.data.batch_size = 6
    exp = experiment.resolve(cfg)
    side = exp.cfg.data.patch_size * exp.cfg.scale
    hr = np.random.default_rng(0).integers(0, 256, (6, side, side, 3), dtype=np.uint8)
    out = {}
    for name, devices in (("one", jax.devices()[:1]), ("four", jax.devices())):
        program = train.build_program(exp, devices)  # what training runs on these devices
        mesh = program.mesh
        state = jax.device_put(program.init_state(), program.state_sharding)
        new, metrics = program.jitted(state, sharding.host_to_global(hr, program.batch_sharding))
        leaf = np.asarray(jax.tree.leaves(new.params)[0]).ravel()[:8]
        out[name] = {"mesh": dict(mesh.shape), "loss": float(metrics["loss"]), "param": leaf.tolist()}
    print(json.dumps(out))
""")


def test_batch_split_over_fewer_devices_matches_one_device():
    """Batch 6 on 4 devices: a (data 2, replica 2) mesh, and the step's loss and updated
    parameters equal the one-device step's (up to the order of the batch sums)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "configs" / "kxnet.py")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["one"]["mesh"] == {"data": 1}
    assert out["four"]["mesh"] == {"data": 2, "replica": 2}
    assert out["four"]["loss"] == pytest.approx(out["one"]["loss"], rel=1e-5)
    assert out["four"]["param"] == pytest.approx(out["one"]["param"], rel=1e-4, abs=1e-6)
