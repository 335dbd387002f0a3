"""PQN: Q(lambda) returns, the normalised network, a smoke run with resume, and clean user errors."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common import paths
from common.dqn import QNetwork, load_policy
from common.errors import UserError
from common.pqn_training import PQNTrainer, lambda_returns

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("train_dqn", ROOT / "01_train_dqn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lambda_returns_on_a_hand_made_rollout():
    """Three steps of one game; the second ends a life, so nothing after it reaches the first two."""
    rewards = np.array([[1.0], [0.0], [1.0]], np.float32)
    ends = np.array([[0.0], [1.0], [0.0]], np.float32)
    values = np.array([[5.0], [6.0], [7.0]], np.float32)     # max_a Q(s_t, a), read while acting
    last = np.array([8.0], np.float32)                       # the state after the rollout
    returns = lambda_returns(rewards, ends, values, last, gamma=0.9, lam=0.5)
    # R2 = 1 + 0.9 * 8 (lambda and 1 - lambda both meet V_3); R1 = 0 (life lost); R0 = 1 + 0.9 * (0.5 R1 + 0.5 V1)
    assert returns[:, 0] == pytest.approx([1 + 0.9 * 3.0, 0.0, 1 + 0.9 * 8.0])
    one_step = lambda_returns(rewards, ends, values, last, gamma=0.9, lam=0.0)   # Q-learning's target
    assert one_step[0, 0] == pytest.approx(1 + 0.9 * 6.0)
    monte_carlo = lambda_returns(rewards, ends, values, last, gamma=0.9, lam=1.0)  # the rewards to the life's end
    assert monte_carlo[0, 0] == pytest.approx(1.0)


def test_the_plain_network_keeps_its_parameter_names_and_the_normalised_one_normalises():
    """Checkpoints without layer_norm (every DQN checkpoint so far) still load into the plain layout."""
    plain, normed = QNetwork(4, 4, (8, 16, 16), 32), QNetwork(4, 4, (8, 16, 16), 32, layer_norm=True)
    assert set(plain.state_dict()) == {f"{layer}.{kind}" for layer in ("convs.0", "convs.2", "convs.4", "fc.0", "head")
                                       for kind in ("weight", "bias")}
    obs = torch.randint(0, 255, (3, 4, 84, 84), dtype=torch.uint8)
    assert normed(obs).shape == (3, 4)
    with torch.no_grad():
        first = normed.convs[:2](obs.float() / 255)          # conv, then the norm over (C, H, W)
    assert first.mean(dim=(1, 2, 3)).abs().max() < 1e-4
    assert first.var(dim=(1, 2, 3), unbiased=False).tolist() == pytest.approx([1.0] * 3, abs=1e-3)


def test_training_on_a_rollout_moves_q_to_its_returns(tmp_path):
    script = load_script()
    trainer = PQNTrainer(script.parse_args(["--preset", "smoke", "--learner", "pqn", "--checkpoint-dir",
                                            str(tmp_path), "--lr", "1e-3", "--epochs", "30"]))
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 255, (16, 4, 4, 84, 84), dtype=np.uint8)
    actions = rng.integers(0, 4, (16, 4))
    returns = np.full((16, 4), 2.0, np.float32)

    def error() -> float:
        with torch.no_grad():
            q = trainer.online(torch.as_tensor(obs.reshape(-1, 4, 84, 84)))
            return float((q.gather(1, torch.as_tensor(actions.reshape(-1, 1))) - 2.0).square().mean())

    before = error()
    trainer.train_on_rollout(obs, actions, returns)
    assert trainer.updates == 30 * (64 // 32)                # epochs x minibatches
    assert error() < 0.1 * before


def run_script(*args, timeout=120):
    return subprocess.run([sys.executable, "01_train_dqn.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_pqn_smoke_run_resume_and_skill_levels(tmp_path):
    common = ["--preset", "smoke", "--learner", "pqn", "--checkpoint-dir", str(tmp_path / "ck"),
              "--log-dir", str(tmp_path / "runs")]
    first = run_script(*common)
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "ck" / "dqn"
    for name in ("skill_level_0.pt", "skill_level_1.pt", "latest.pt", "best.pt", "train_log.csv", "eval_log.csv"):
        assert (out / name).exists(), name
    latest = torch.load(out / "latest.pt", weights_only=True)
    assert latest["step"] >= 400 and latest["updates"] > 0 and "target_state_dict" not in latest
    assert latest["model_config"]["layer_norm"] and latest["train_config"]["learner"] == "pqn"
    policy = load_policy(out / "skill_level_1.pt")           # stage 2 loads it like any DQN level
    assert policy.act(np.zeros((2, 4, 84, 84), np.uint8)).shape == (2,)

    resumed = run_script(*common, "--resume", "--total-steps", "600")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = torch.load(out / "latest.pt", weights_only=True)
    assert again["step"] >= 600 and again["updates"] > latest["updates"]


def test_pqn_flag_mistakes_are_user_errors(tmp_path):
    script = load_script()
    with pytest.raises(UserError, match="larger than a rollout"):
        script.parse_args(["--preset", "smoke", "--learner", "pqn", "--batch-size", "512"])
    with pytest.raises(UserError, match="does not combine"):
        script.parse_args(["--learner", "pqn", "--paper"])
    result = run_script("--preset", "smoke", "--learner", "pqn", "--optimizer", "rmsprop-dm",
                        "--checkpoint-dir", str(tmp_path), "--log-dir", str(tmp_path / "runs"), timeout=60)
    assert result.returncode == 2 and "trains with Adam" in result.stderr and "Traceback" not in result.stderr
    assert not paths.dqn_checkpoint(tmp_path, "latest").exists()
