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


def test_sigterm_on_one_host_stops_every_host_at_the_same_step(tmp_path):
    """A preemption notice on host 1 only: JAX's preemption sync point makes both hosts save the same
    step and exit 0; the same command then resumes from it and finishes."""
    import signal
    import time

    args = ["--config.train.checkpoint_every=1000", "--config.train.eval_every=3"]  # validation: a window
    env = dict(os.environ, PORT=str(_free_port()), DEVICES_PER_PROCESS="2", JAX_PLATFORMS="cpu",
               PYTHONUNBUFFERED="1")
    launcher = subprocess.Popen(["bash", "launch/local_multiprocess.sh", "2", "--config=configs/dan.py:tiny",
                                 f"--workdir={tmp_path}", "--config.train.steps=12", "--config.train.log_every=1",
                                 *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    deadline = time.time() + 900
    while not (tmp_path / "metrics.jsonl").is_file() or sum('"loss"' in l for l in open(tmp_path / "metrics.jsonl")) < 2:
        assert launcher.poll() is None, launcher.communicate()[0]
        assert time.time() < deadline, "no step 2 within 15 minutes"
        time.sleep(0.1)
    hosts = subprocess.run(["pgrep", "-P", str(launcher.pid), "-f", "jaxsr.main"], capture_output=True,
                           text=True).stdout.split()
    assert len(hosts) == 2, hosts
    os.kill(int(hosts[-1]), signal.SIGTERM)  # the second host only
    out = launcher.communicate(timeout=900)[0]
    assert launcher.returncode == 0, out
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 2 <= saved[0] < 12, saved
    assert f"stopped by a preemption notice (SIGTERM on some host) after step {saved[0]}/12" in out  # host 0's log

    env["PORT"] = str(_free_port())
    resumed = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "--config=configs/dan.py:tiny",
                              f"--workdir={tmp_path}", "--config.train.steps=12", "--config.train.log_every=1", *args],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at step {saved[0]}" in resumed.stdout
    steps = [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl") if '"loss"' in l]
    assert steps == list(range(1, 13))
