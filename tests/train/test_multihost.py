"""Two cooperating processes (jax.distributed over localhost, 2 CPU devices each) train, checkpoint
and resume through the same `launch/local_multiprocess.sh` a user would run."""
import json
import os
import pathlib
import socket
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir, steps):
    env = dict(os.environ, PORT=str(_free_port()), DEVICES_PER_PROCESS="2", JAX_PLATFORMS="cpu")
    return subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "--config=configs/dan.py:tiny",
                           f"--workdir={workdir}", f"--config.train.steps={steps}", "--config.train.log_every=1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_two_processes_train_and_resume(tmp_path):
    first = _launch(tmp_path, 4)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 devices over 2 processes" in first.stdout
    assert (tmp_path / "checkpoints" / "4").is_dir()
    second = _launch(tmp_path, 6)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from" in second.stdout and "at step 4" in second.stdout
    steps = [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl") if '"loss"' in l]
    assert steps == list(range(1, 7))
