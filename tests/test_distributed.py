"""03_train_latent_action.py under torchrun: two gloo processes on this CPU train the model one process
trains, keep one model on every rank, let rank 0 alone write, resume across process counts, stop together."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from common import paths

from conftest import REPO, run_script

# a run that draws nothing at random (every pixel scored, no event latent, no codebook yet) in float32, so
# 1 and 2 processes must end with the same weights up to the order of float sums (bfloat16 rounds a half
# batch's sums differently from a whole one's)
DETERMINISTIC = ["--keep-static", "1", "--event-classes", "0", "--vq-warmup", "1000", "--precision", "fp32"]


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def failure(result: subprocess.CompletedProcess) -> str:
    """What a failed run said: torchrun ends stderr with its own traceback, so the ranks' error lines
    first, then the tail."""
    errors = [line for line in result.stderr.splitlines() if "Error" in line and "ChildFailedError" not in line]
    return "\n".join(errors[:20]) + "\n...\n" + result.stderr[-2000:]


def smoke_args(data, root, *extra: str) -> list[str]:
    return ["03_train_latent_action.py", "--preset", "smoke", "--data-dir", str(data), "--checkpoint-dir",
            str(root), "--log-dir", str(root / "runs"), *extra]


def latest(root) -> dict:
    return torch.load(paths.latent_checkpoint(root, "latest"), weights_only=True)


def test_two_processes_train_what_one_process_trains(smoke_data, tmp_path):
    one = run_script(*smoke_args(smoke_data, tmp_path / "one", *DETERMINISTIC))
    assert one.returncode == 0, failure(one)
    two = torchrun(*smoke_args(smoke_data, tmp_path / "two", *DETERMINISTIC))
    assert two.returncode == 0, failure(two)
    single, double = latest(tmp_path / "one"), latest(tmp_path / "two")
    assert single["step"] == double["step"] == 20
    assert (single["world_size"], double["world_size"]) == (1, 2)
    for name, weight in single["model"].items():
        if weight.is_floating_point():
            torch.testing.assert_close(double["model"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
    first = torch.load(paths.latent_checkpoint(tmp_path / "one", "best"), weights_only=True)
    assert any((first["model"][k] != v).any() for k, v in double["model"].items())   # and both did train


def test_ranks_keep_one_model_rank_0_writes_and_resume_crosses_process_counts(smoke_data, tmp_path):
    root = tmp_path / "ck"
    first = torchrun(*smoke_args(smoke_data, root, "--max-steps", "12"))
    assert first.returncode == 0, failure(first)
    metrics = (paths.latent_metrics_path(root)).read_text()
    assert '"world_size": 2' in metrics and '"ranks_identical": true' in metrics
    assert first.stdout.count("trained 12 updates") == 1                       # rank 0 alone reports
    assert len(list((root / "runs" / "latent_action" / "tb").iterdir())) == 1  # and alone logs
    assert sorted(p.name for p in paths.latent_dir(root).iterdir() if p.suffix == ".pt") == ["best.pt", "latest.pt"]
    state = latest(root)
    assert state["world_size"] == 2 and len(state["torch_rng"]) == 2

    alone = run_script(*smoke_args(smoke_data, root, "--resume", "--max-steps", "18", "--time-budget", "5"))
    assert alone.returncode == 0, failure(alone)
    assert "resumed from step 12" in alone.stdout and "in 2 processes" in alone.stdout
    assert latest(root)["step"] == 18 and latest(root)["world_size"] == 1

    again = torchrun(*smoke_args(smoke_data, root, "--resume", "--max-steps", "24", "--time-budget", "5"))
    assert again.returncode == 0, failure(again)
    assert "resumed from step 18" in again.stdout
    assert latest(root)["step"] == 24 and latest(root)["world_size"] == 2
    assert '"ranks_identical": true' in paths.latent_metrics_path(root).read_text()


def test_a_global_batch_that_does_not_split_is_refused(smoke_data, tmp_path):
    result = torchrun(*smoke_args(smoke_data, tmp_path / "ck", "--batch-size", "5"))
    assert result.returncode != 0 and "--batch-size 5 is the global batch" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT")
def test_ctrl_c_stops_every_rank_at_one_update_and_rank_0_saves(smoke_data, tmp_path):
    root = tmp_path / "ck"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *smoke_args(smoke_data, root, "--max-steps", "100000", "--time-budget", "5")]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    deadline = time.time() + 120
    while not paths.latent_checkpoint(root, "latest").exists() and time.time() < deadline:   # first save: 4 s in
        time.sleep(0.5)
    time.sleep(1.0)
    os.killpg(run.pid, signal.SIGINT)          # what Ctrl-C in the terminal sends to the whole group
    output, _ = run.communicate(timeout=120)
    assert output.count("interrupted at step") == 1, output[-3000:]
    stopped_at = int(output.split("interrupted at step ")[1].split(":")[0])
    state = latest(root)
    assert state["step"] == stopped_at and state["world_size"] == 2
