"""DQN: Double-DQN target, policy API, checkpoints, resume, a smoke run and clean user errors."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common import paths
from common.dqn import DeepMindRMSprop, DQNPolicy, QNetwork, load_policy, td_targets
from common.dqn_training import Trainer
from common.errors import UserError
from common.io import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["--preset", "smoke", "--learner", "dqn"]   # the smoke preset trains PQN unless told otherwise


def run_script(*args, timeout=120):
    return subprocess.run([sys.executable, "01_train_dqn.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


class FixedQ(torch.nn.Module):
    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)

    def forward(self, obs):
        return self.table[: len(obs)]


def test_double_dqn_target_uses_online_argmax_and_target_values():
    online = FixedQ([[1.0, 5.0, 0.0], [9.0, 0.0, 0.0]])
    target = FixedQ([[2.0, 3.0, 10.0], [4.0, 8.0, 1.0]])
    next_obs = torch.zeros(2, 1)
    returns, bootstrap = torch.tensor([1.0, 0.5]), torch.tensor([0.9, 0.0])
    double = td_targets(online, target, next_obs, returns, bootstrap, double=True)
    assert torch.allclose(double, torch.tensor([1.0 + 0.9 * 3.0, 0.5]))  # a* = 1 from the online net
    vanilla = td_targets(online, target, next_obs, returns, bootstrap, double=False)
    assert torch.allclose(vanilla, torch.tensor([1.0 + 0.9 * 10.0, 0.5]))  # max of the target net


def test_network_shapes_and_dueling_head():
    obs = torch.randint(0, 255, (3, 8, 84, 84), dtype=torch.uint8)
    assert QNetwork(4, 8, (8, 16, 16), 32)(obs).shape == (3, 4)
    dueling = QNetwork(6, 8, (8, 16, 16), 32, dueling=True)
    assert dueling(obs).shape == (3, 6)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in dueling.modules()) == 3
    assert sum(isinstance(m, torch.nn.Linear) for m in dueling.modules()) == 2


def test_deepmind_rmsprop_step_matches_formula():
    param = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = DeepMindRMSprop([param], lr=0.1, decay=0.95, eps=0.01)
    param.grad = torch.tensor([2.0])
    optimizer.step()
    g, g2 = 0.05 * 2.0, 0.05 * 4.0
    assert param.item() == pytest.approx(1.0 - 0.1 * 2.0 / np.sqrt(g2 - g * g + 0.01))


def make_policy(env_config=None):
    model_config = {"num_actions": 4, "stack": 8, "conv_widths": [8, 16, 16], "fc_width": 32, "dueling": False}
    env_config = env_config or {"game": "breakout", "frame_skip": 4, "stack": 8, "noop_max": 30,
                                "repeat_action_probability": 0.0, "num_actions": 4,
                                "action_meanings": ["NOOP", "FIRE", "RIGHT", "LEFT"]}
    net = QNetwork(4, 8, (8, 16, 16), 32)
    return DQNPolicy(net, model_config, env_config)


def test_policy_act_greedy_and_epsilon():
    policy = make_policy()
    obs = np.random.default_rng(0).integers(0, 255, (64, 8, 84, 84), dtype=np.uint8)
    greedy = policy.act(obs)
    assert greedy.shape == (64,) and greedy.dtype == np.int64
    assert (greedy == policy.q_values(obs).argmax(axis=1)).all()
    random = policy.act(obs, epsilon=1.0, rng=np.random.default_rng(1))
    assert set(random.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        policy.act(obs[:, :4])


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    policy = make_policy()
    path = tmp_path / "skill_level_1.pt"
    save_checkpoint(path, kind="dqn", model_config=policy.model_config, env_config=policy.env_config,
                    state_dict=policy.net.state_dict(), step=123, eval_score=55.0)
    loaded = load_policy(path)
    obs = np.random.default_rng(0).integers(0, 255, (5, 8, 84, 84), dtype=np.uint8)
    assert np.allclose(loaded.q_values(obs), policy.q_values(obs), atol=1e-6)
    assert loaded.step == 123 and loaded.eval_score == 55.0 and loaded.env_config["game"] == "breakout"
    with pytest.raises(UserError, match="not found.*01_train_dqn.py"):
        load_policy(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        load_policy(tmp_path / "corrupt.pt")
    save_checkpoint(tmp_path / "foreign.pt", kind="latent_action", state_dict={})
    with pytest.raises(UserError, match="not a dqn checkpoint"):
        load_policy(tmp_path / "foreign.pt")
    save_checkpoint(tmp_path / "damaged.pt", kind="dqn", model_config=policy.model_config,
                    env_config=policy.env_config, state_dict={"oops": torch.zeros(1)})
    with pytest.raises(UserError, match="damaged"):
        load_policy(tmp_path / "damaged.pt")


def load_script():
    spec = importlib.util.spec_from_file_location("train_dqn", ROOT / "01_train_dqn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_non_finite_loss_saves_and_stops_with_a_clear_message(tmp_path):
    script = load_script()
    args = script.parse_args([*SMOKE, "--checkpoint-dir", str(tmp_path), "--learning-starts", "0"])
    trainer = Trainer(args)
    obs = np.zeros((args.num_envs, 8, 84, 84), dtype=np.uint8)
    trainer.replay.start(obs)
    for _ in range(10):
        trainer.replay.add(np.zeros(2, int), np.full(2, np.nan, np.float32), np.zeros(2, bool), obs,
                           np.zeros(2, bool))
    before = {k: v.clone() for k, v in trainer.online.state_dict().items()}
    with pytest.raises(UserError, match="non-finite loss"):
        trainer.learn()
    saved = torch.load(paths.dqn_checkpoint(tmp_path, "latest"), weights_only=True)
    assert all(torch.equal(saved["state_dict"][k], before[k]) for k in before)  # saved before the bad step


def test_lr_end_anneals_the_learning_rate_over_the_time_budget_or_the_steps(tmp_path):
    script = load_script()
    trainer = Trainer(script.parse_args([*SMOKE, "--checkpoint-dir", str(tmp_path),
                                         "--lr", "1e-3", "--lr-end", "1e-4", "--time-budget", "10",
                                         "--total-steps", "1000"]))
    trainer.wall = lambda: 0.0                                       # the run's clock, set by hand
    assert trainer.learning_rate() == pytest.approx(1e-3)
    trainer.step = 250                                               # a quarter of the steps
    assert trainer.learning_rate() == pytest.approx(1e-3 - 0.25 * 9e-4)
    trainer.wall = lambda: 300.0                                     # half the 10 minutes: time leads
    assert trainer.learning_rate() == pytest.approx(1e-3 - 0.5 * 9e-4)
    trainer.wall = lambda: 3600.0                                    # past the budget: held at the end
    assert trainer.learning_rate() == pytest.approx(1e-4)
    obs = np.zeros((trainer.args.num_envs, 8, 84, 84), dtype=np.uint8)
    trainer.replay.start(obs)
    for _ in range(20):
        trainer.replay.add(np.zeros(2, int), np.zeros(2, np.float32), np.zeros(2, bool), obs, np.zeros(2, bool))
    trainer.learn()                                                  # the optimizer steps with it
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    constant = Trainer(script.parse_args([*SMOKE, "--checkpoint-dir", str(tmp_path / "c")]))
    constant.step = 300
    assert constant.learning_rate() == constant.args.lr


def test_a_run_below_every_threshold_keeps_its_best_network_as_level_1(tmp_path):
    """Stage 2 always gets a played level: best.pt becomes skill_level_1.pt, labelled as not reaching 1."""
    script = load_script()
    args = script.parse_args([*SMOKE, "--checkpoint-dir", str(tmp_path), "--skill-thresholds", "5", "9"])
    trainer = Trainer(args)
    trainer.best_score = 3.5
    trainer.save_policy("best", 3.5)
    trainer.keep_best_as_top_level()
    level = load_policy(paths.dqn_checkpoint(tmp_path, "skill_level_1"))
    assert (level.threshold, level.threshold_reached, level.eval_score) == (5.0, False, 3.5)
    best = torch.load(paths.dqn_checkpoint(tmp_path, "best"), weights_only=True)["state_dict"]
    assert all(torch.equal(level.net.state_dict()[k], best[k]) for k in best)

    reached = Trainer(script.parse_args([*SMOKE, "--checkpoint-dir", str(tmp_path / "other")]))
    reached.skill_reached = [1.0]
    reached.save_policy("best", 1.5)
    reached.keep_best_as_top_level()                   # a reached level is never replaced by the fallback
    assert not (tmp_path / "other" / "dqn" / "skill_level_1.pt").exists()
    assert script.parse_args(["--preset", "quick"]).skill_thresholds == script.QUICK_THRESHOLDS
    assert script.parse_args(["--preset", "full"]).skill_thresholds == [50.0, 150.0, 250.0]


def test_smoke_run_resume_and_evaluate(tmp_path):
    common = [*SMOKE, "--checkpoint-dir", str(tmp_path / "ck"), "--log-dir", str(tmp_path / "runs")]
    first = run_script(*common)
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "ck" / "dqn"
    for name in ("skill_level_0.pt", "skill_level_1.pt", "latest.pt", "best.pt", "train_log.csv", "eval_log.csv"):
        assert (out / name).exists(), name
    assert list((tmp_path / "runs" / "dqn").glob("*/events.out.tfevents.*"))
    untrained = load_policy(out / "skill_level_0.pt")
    assert untrained.step == 0 and untrained.env_config["stack"] == 8
    latest = torch.load(out / "latest.pt", weights_only=True)
    assert latest["step"] == 400 and latest["updates"] > 0

    refused = run_script(*common)           # a second run without --resume would replace the first
    assert refused.returncode == 2 and "--resume" in refused.stderr and "--fresh" in refused.stderr
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 400
    resumed = run_script(*common, "--resume", "--total-steps", "500")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = torch.load(out / "latest.pt", weights_only=True)
    assert again["step"] == 500 and again["updates"] > latest["updates"]
    assert again["games"] >= latest["games"]

    script = load_script()
    script.run_evaluation(script.parse_args(["--evaluate", str(out / "best.pt"), "--episodes", "2",
                                             "--eval-max-frames", "2000", "--eval-out", str(tmp_path / "eval")]))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["episodes"] == 2 and {"mean", "std", "min", "max", "zero_reward_life_share"} <= set(summary)
    games = (tmp_path / "eval" / "games.csv").read_text().splitlines()
    assert games[0].startswith("env,game_of_env,return") and len(games) == 3
    assert len((tmp_path / "eval" / "lives.csv").read_text().splitlines()) >= 3


def test_a_second_run_into_a_folder_being_trained_is_refused(tmp_path):
    """Two 01 runs on one checkpoint folder would interleave their logs and checkpoints."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = paths.training_lock(paths.dqn_dir(tmp_path))
        lock.parent.mkdir(parents=True)
        lock.write_text(str(holder.pid))
        result = run_script(*SMOKE, "--checkpoint-dir", str(tmp_path), "--log-dir", str(tmp_path / "runs"))
        assert result.returncode == 2 and "another 01_train_dqn.py run" in result.stderr
        assert not paths.dqn_checkpoint(tmp_path, "latest").exists()
    finally:
        holder.kill()
        holder.wait()
    result = run_script(*SMOKE, "--checkpoint-dir", str(tmp_path), "--log-dir", str(tmp_path / "runs"),
                        "--total-steps", "200")  # a lock whose owner is gone is taken over
    assert result.returncode == 0, result.stderr[-2000:]
    assert not lock.exists()


def test_unknown_game_gives_clear_error_without_traceback(tmp_path):
    result = run_script(*SMOKE, "--checkpoint-dir", str(tmp_path), "--game", "Brekout", timeout=60)
    assert result.returncode == 2
    assert "unknown Atari game 'Brekout'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--lr", "-1"], "is not a positive number"),
    (["--num-envs", "0"], "is not a positive integer"),
    (["--sticky", "1.5"], "is not a number between 0 and 1"),
])
def test_bad_flag_values_are_rejected(args, message, capsys):
    script = load_script()
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args([*SMOKE, *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bad_thresholds_and_missing_checkpoint_are_user_errors(tmp_path):
    script = load_script()
    with pytest.raises(UserError, match="must be increasing"):
        script.parse_args(["--skill-thresholds", "150", "50"])
    args = script.parse_args([*SMOKE, "--evaluate", str(tmp_path / "missing.pt")])
    with pytest.raises(UserError, match="not found: run 01_train_dqn.py first"):
        script.run_evaluation(args)


def test_corrupt_checkpoint_for_evaluate_and_resume(tmp_path):
    bad = paths.dqn_checkpoint(tmp_path, "latest")
    bad.parent.mkdir()
    bad.write_bytes(b"garbage")
    result = run_script("--evaluate", str(bad), timeout=60)
    assert result.returncode == 2 and "corrupt" in result.stderr and "Traceback" not in result.stderr
    script = load_script()
    trainer = Trainer(script.parse_args([*SMOKE, "--resume", "--checkpoint-dir", str(tmp_path)]))
    with pytest.raises(UserError, match="corrupt"):
        trainer.train()
