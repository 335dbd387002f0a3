"""Stage 1: train a DQN on Atari Breakout and save checkpoints at several skill levels.

    python 01_train_dqn.py --preset quick                 # 2-core CPU, 52-minute budget
    python 01_train_dqn.py --resume                       # continue checkpoints/dqn/latest.pt
    python 01_train_dqn.py --evaluate checkpoints/dqn/best.pt --episodes 30 --epsilon 0.05

Writes checkpoints/dqn/: skill_level_0.pt (before learning) and skill_level_k.pt the first time
the evaluation mean reaches each --skill-thresholds value, latest.pt (resume state), best.pt,
train_log.csv, eval_log.csv; TensorBoard events under runs/dqn/.
"""
from __future__ import annotations

import argparse
import csv
import functools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.atari import game_over_mask, make_env_config, make_vector_env, resolve_game
from common.cli import (add_preset_arg, apply_preset, non_negative_float, non_negative_int, pick_device,
                        positive_float, positive_int, probability, refuse_to_replace, run_main, set_threads)
from common.dqn import (RND, DeepMindRMSprop, DQNPolicy, build_q_network, evaluate_policy, load_policy,
                        td_targets, to_model_input)
from common.errors import UserError
from common.io import atomic_write_json, check_writable, load_checkpoint, save_checkpoint
from common.paths import dqn_checkpoint, dqn_dir
from common.replay import FrameReplay

# evaluation means that name the skill levels; the quick preset's are what its 52 minutes reach (part1.md)
QUICK_THRESHOLDS = [10.0, 20.0, 30.0]

PRESETS = {
    # the whole loop in a few seconds, for tests
    "smoke": dict(total_steps=400, time_budget=0.5, num_envs=2, replay_size=4_000, batch_size=16, lr=1e-4,
                  n_step=3, target_update=20, learning_starts=200, updates_per_step=0.25, eps_end=0.1,
                  eps_decay_steps=300, stack=8, conv_widths=[8, 16, 16], fc_width=64, dueling=True,
                  double=True, per=True, eval_every=400, eval_episodes=2, eval_max_frames=2_000,
                  save_every_min=5.0, threads=1, log_every=200, channels_last=False,
                  skill_thresholds=[1.0, 2.0]),
    # chosen by measurement for the most learning per wall-clock minute on a 2-core CPU (part1.md)
    "quick": dict(total_steps=2_000_000, time_budget=52.0, num_envs=8, replay_size=100_000, batch_size=32,
                  lr=2.5e-4, n_step=3, target_update=500, learning_starts=5_000, updates_per_step=0.125,
                  eps_end=0.02, eps_decay_steps=50_000, stack=8, conv_widths=[16, 32, 32], fc_width=256,
                  dueling=True, double=True, per=True, eval_every=20_000, eval_episodes=8,
                  eval_max_frames=40_000, save_every_min=5.0, threads=1, log_every=5_000, channels_last=True,
                  skill_thresholds=QUICK_THRESHOLDS),
    # the seeds' numbers (seed 000) for a GPU
    "full": dict(total_steps=10_000_000, time_budget=0.0, num_envs=8, replay_size=100_000, batch_size=128,
                 lr=1e-4, n_step=3, target_update=1_000, learning_starts=20_000, updates_per_step=0.25,
                 eps_end=0.1, eps_decay_steps=1_000_000, stack=8, conv_widths=[32, 64, 64], fc_width=512,
                 dueling=True, double=True, per=True, eval_every=250_000, eval_episodes=30,
                 eval_max_frames=108_000, save_every_min=5.0, threads=0, log_every=10_000,
                 channels_last=False, skill_thresholds=[50.0, 150.0, 250.0]),
}

# Nature DQN (Mnih et al. 2015; seed 004 Track A): overrides preset values, explicit flags still win
PAPER = dict(stack=4, conv_widths=[32, 64, 64], fc_width=512, replay_size=1_000_000, batch_size=32, lr=2.5e-4,
             optimizer="rmsprop-dm", double=False, dueling=False, per=False, n_step=1, target_update=10_000,
             learning_starts=50_000, updates_per_step=0.25, eps_end=0.1, eps_decay_steps=250_000,
             eps_schedule="linear", grad_clip=0.0, num_envs=1, total_steps=12_500_000, eval_epsilon=0.05,
             eval_max_frames=18_000, eval_episodes=30, sticky=0.0, noop_max=30, channels_last=False)

TRAIN_LOG_FIELDS = ["step", "frames", "wall_s", "games", "epsilon", "recent_score", "loss", "q_mean",
                    "steps_per_s", "updates_per_s"]
EVAL_LOG_FIELDS = ["step", "frames", "wall_s", "eval_mean", "eval_std", "eval_min", "eval_max", "episodes",
                   "zero_reward_life_share"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_arg(p)
    g = p.add_argument_group("run")
    g.add_argument("--checkpoint-dir", default="checkpoints", help="checkpoint ROOT; this stage writes <root>/dqn")
    g.add_argument("--log-dir", default="runs", help="TensorBoard events go to <log-dir>/dqn/<time>")
    g.add_argument("--time-budget", type=non_negative_float, default=None, help="minutes of training (0 = none)")
    g.add_argument("--total-steps", type=positive_int, default=None, help="agent steps (all envs together)")
    g.add_argument("--device", default=None, help="cpu | cuda | mps (default: CUDA -> MPS -> CPU)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=non_negative_int, default=None,
                   help="torch threads (0 = all cores; 1 is faster on a busy shared machine)")
    g.add_argument("--env-threads", type=positive_int, default=1, help="C++ emulator threads")
    g.add_argument("--resume", action="store_true", help="continue from <checkpoint-dir>/dqn/latest.pt")
    g.add_argument("--fresh", action="store_true",
                   help="start over although <checkpoint-dir>/dqn holds a trained run (it is replaced)")
    g.add_argument("--paper", action="store_true", help="Nature-DQN setup (RMSProp, uniform replay, 4 frames)")
    g.add_argument("--compile", action="store_true", help="torch.compile the Q-network")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format for the convs (faster with oneDNN on CPU)")
    g.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=True,
                   help="run gradient updates while the C++ emulator steps the games")
    g.add_argument("--wandb", action="store_true", help="log to Weights & Biases (if installed)")
    g.add_argument("--save-every-min", type=positive_float, default=None, help="minutes between latest.pt saves")
    g.add_argument("--log-every", type=positive_int, default=None, help="agent steps between train_log rows")

    g = p.add_argument_group("environment")
    g.add_argument("--game", default="breakout", help="ALE game: breakout, pong, ms_pacman, space_invaders, ...")
    g.add_argument("--frame-skip", type=positive_int, default=4)
    g.add_argument("--stack", type=positive_int, default=None, help="frames per observation")
    g.add_argument("--noop-max", type=non_negative_int, default=None, help="random no-ops at a game's start")
    g.add_argument("--sticky", type=probability, default=None, help="sticky-action probability (v5 uses 0.25)")
    g.add_argument("--num-envs", type=positive_int, default=None, help="parallel games (C++ vector env)")

    g = p.add_argument_group("agent")
    g.add_argument("--conv-widths", type=positive_int, nargs=3, default=None, help="channels of the 3 convs")
    g.add_argument("--fc-width", type=positive_int, default=None, help="hidden units of the first FC layer")
    g.add_argument("--dueling", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--double", action=argparse.BooleanOptionalAction, default=None, help="Double DQN target")
    g.add_argument("--replay-size", type=positive_int, default=None, help="transitions (frames stored once)")
    g.add_argument("--batch-size", type=positive_int, default=None)
    g.add_argument("--lr", type=positive_float, default=None)
    g.add_argument("--optimizer", choices=["adam", "rmsprop-dm"], default=None)
    g.add_argument("--adam-eps", type=positive_float, default=1.5e-4)
    g.add_argument("--gamma", type=probability, default=0.99)
    g.add_argument("--n-step", type=positive_int, default=None)
    g.add_argument("--target-update", type=positive_int, default=None, help="updates between target syncs")
    g.add_argument("--grad-clip", type=non_negative_float, default=None, help="max grad norm (0 = off)")
    g.add_argument("--learning-starts", type=non_negative_int, default=None, help="random steps filling the replay")
    g.add_argument("--updates-per-step", type=positive_float, default=None, help="gradient updates per agent step")
    g.add_argument("--per", action=argparse.BooleanOptionalAction, default=None, help="prioritized replay")
    g.add_argument("--per-alpha", type=non_negative_float, default=0.6)
    g.add_argument("--per-beta", type=probability, default=0.4, help="initial IS exponent, annealed to 1")

    g = p.add_argument_group("exploration and rewards")
    g.add_argument("--exploration", choices=["epsilon", "boltzmann"], default="epsilon")
    g.add_argument("--eps-start", type=probability, default=1.0)
    g.add_argument("--eps-end", type=probability, default=None)
    g.add_argument("--eps-decay-steps", type=positive_int, default=None)
    g.add_argument("--eps-schedule", choices=["linear", "exp"], default=None)
    g.add_argument("--temperature-start", type=positive_float, default=1.0, help="Boltzmann temperature")
    g.add_argument("--temperature-end", type=positive_float, default=0.05)
    g.add_argument("--rnd-coef", type=non_negative_float, default=0.0, help="RND intrinsic reward weight (0 = off)")
    g.add_argument("--living-penalty", type=non_negative_float, default=0.0, help="subtracted every step")
    g.add_argument("--life-loss-penalty", type=non_negative_float, default=0.0, help="subtracted per lost life")

    g = p.add_argument_group("evaluation and skill levels")
    g.add_argument("--eval-every", type=positive_int, default=None, help="agent steps between evaluations")
    g.add_argument("--eval-episodes", type=positive_int, default=None, help="full games per evaluation")
    g.add_argument("--eval-epsilon", type=probability, default=None)
    g.add_argument("--eval-max-frames", type=positive_int, default=None, help="emulator frames cap per game")
    g.add_argument("--skill-thresholds", type=positive_float, nargs="+", default=None,
                   help="evaluation means naming skill levels 1, 2, ... (smoke 1 2, quick "
                        f"{' '.join(f'{t:g}' for t in QUICK_THRESHOLDS)}, full 50 150 250). A run that reaches "
                        "none still saves its best network as skill_level_1.pt, marked threshold_reached false")
    g.add_argument("--evaluate", metavar="CHECKPOINT", help="only evaluate this checkpoint and exit")
    g.add_argument("--episodes", type=positive_int, default=None, help="games for --evaluate (default 30)")
    g.add_argument("--epsilon", type=probability, default=None, help="epsilon for --evaluate (default 0.05)")
    g.add_argument("--eval-out", default=None, help="folder for --evaluate CSV/JSON (default <log-dir>/eval/<name>)")
    args = p.parse_args(argv)

    if args.paper:
        for key, value in PAPER.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    apply_preset(args, PRESETS)
    defaults = dict(optimizer="adam", grad_clip=10.0, eps_schedule="linear", eval_epsilon=0.05, sticky=0.0,
                    noop_max=30)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if sorted(args.skill_thresholds) != list(args.skill_thresholds):
        raise UserError("--skill-thresholds must be increasing, e.g. 50 150 250")
    if args.eps_end > args.eps_start:
        raise UserError("--eps-end must not exceed --eps-start")
    return args


def schedule(step: int, start: float, end: float, decay_steps: int, kind: str) -> float:
    """Linear or exponential (geometric) anneal from start to end over decay_steps, then flat."""
    frac = min(1.0, step / decay_steps)
    if kind == "exp" and start > 0 and end > 0:
        return start * (end / start) ** frac
    return start + frac * (end - start)


def append_csv(path: Path, fields: list[str], row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def run_evaluation(args: argparse.Namespace) -> None:
    """--evaluate: score a checkpoint over N full games, write per-game/per-life CSV and a JSON summary."""
    device = pick_device(args.device)
    policy = load_policy(args.evaluate, device=str(device))
    episodes = args.episodes or 30
    epsilon = 0.05 if args.epsilon is None else args.epsilon
    print(f"evaluating {args.evaluate} (step {policy.step}) on {policy.env_config['game']}: "
          f"{episodes} games, epsilon {epsilon}")
    result = evaluate_policy(policy, episodes, epsilon, args.eval_max_frames or 108_000, seed=args.seed)
    out = Path(args.eval_out or Path(args.log_dir) / "eval" / Path(args.evaluate).stem)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("games", result["games"]), ("lives", result["lives"])):
        with (out / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            writer.writerows(rows)
    summary = {k: result[k] for k in ("mean", "std", "min", "max", "episodes", "zero_reward_life_share")}
    summary.update(checkpoint=str(args.evaluate), epsilon=epsilon, step=policy.step,
                   lives=len(result["lives"]), game=policy.env_config["game"])
    atomic_write_json(out / "summary.json", summary)
    print(f"mean {summary['mean']:.1f}  std {summary['std']:.1f}  min {summary['min']:.0f}  "
          f"max {summary['max']:.0f}  zero-reward lives {summary['zero_reward_life_share']:.0%}  -> {out}")


class Trainer:
    """Owns the networks, optimizer, replay and counters; train() is the loop."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = pick_device(args.device)
        self.threads = set_threads(args.threads or None)
        self.out_dir = dqn_dir(args.checkpoint_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.env_config = make_env_config(args.game, args.frame_skip, args.stack, args.noop_max, args.sticky)
        self.model_config = {"num_actions": self.env_config["num_actions"], "stack": args.stack,
                             "conv_widths": list(args.conv_widths), "fc_width": args.fc_width,
                             "dueling": bool(args.dueling)}
        torch.manual_seed(args.seed)
        self.rng = np.random.default_rng(args.seed)
        self.online = build_q_network(self.model_config).to(self.device)
        self.target = build_q_network(self.model_config).to(self.device)
        self.target.load_state_dict(self.online.state_dict())
        self.target.requires_grad_(False)
        if args.channels_last:
            self.online.to(memory_format=torch.channels_last)
            self.target.to(memory_format=torch.channels_last)
        if args.optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.online.parameters(), lr=args.lr, eps=args.adam_eps,
                                              fused=self.device.type in ("cpu", "cuda"))  # one kernel, 4x faster
        else:
            self.optimizer = DeepMindRMSprop(self.online.parameters(), lr=args.lr)
        self.forward = torch.compile(self.online) if args.compile else self.online
        self.target_forward = torch.compile(self.target) if args.compile else self.target
        self.rnd = self.rnd_optimizer = None
        if args.rnd_coef > 0:
            self.rnd = RND().to(self.device)
            self.rnd_optimizer = torch.optim.Adam(self.rnd.predictor.parameters(), lr=1e-4)
            self.rnd_stats = np.array([0.0, 0.0, 1e-4])  # count, mean, M2 of intrinsic rewards (Welford)
        self.replay = FrameReplay(args.replay_size, args.num_envs, args.stack, args.n_step, args.gamma,
                                  prioritized=bool(args.per), alpha=args.per_alpha)
        self.step = self.updates = self.games = 0
        self.elapsed_before = 0.0
        self.best_score = -math.inf
        self.skill_reached: list[float] = []
        self.recent_scores: list[float] = []
        self.loss_sum = self.q_sum = 0.0
        self.loss_count = 0
        self.last_eval_step = -1
        self.start_time = time.monotonic()

    # ---- checkpoints -------------------------------------------------------------------------
    def _policy_fields(self, eval_score: float | None) -> dict:
        state = {k: v.detach().cpu() for k, v in self.online.state_dict().items()}
        return dict(model_config=self.model_config, env_config=self.env_config, state_dict=state,
                    step=self.step, frames=self.step * self.env_config["frame_skip"], eval_score=eval_score,
                    wall_s=self.wall(), train_config=self.config_dict())

    def config_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.args).items()
                if isinstance(v, (int, float, str, bool, list, tuple, type(None)))}

    def checkpoint(self, name: str) -> Path:
        return dqn_checkpoint(self.args.checkpoint_dir, name)

    def save_policy(self, name: str, eval_score: float | None, **extra) -> None:
        """name: "latest", "best" or "skill_level_k"."""
        save_checkpoint(self.checkpoint(name), kind="dqn", **self._policy_fields(eval_score), **extra)

    def save_latest(self) -> None:
        """Everything --resume needs except the replay, which is refilled."""
        extra = dict(target_state_dict={k: v.cpu() for k, v in self.target.state_dict().items()},
                     optimizer_state=self.optimizer.state_dict(), updates=self.updates, games=self.games,
                     best_score=self.best_score if math.isfinite(self.best_score) else None,
                     skill_reached=self.skill_reached, recent_scores=self.recent_scores[-100:],
                     numpy_rng=self.rng.bit_generator.state, torch_rng=torch.get_rng_state(),
                     rnd_state=self.rnd.state_dict() if self.rnd else None,
                     rnd_optimizer_state=self.rnd_optimizer.state_dict() if self.rnd else None)
        self.save_policy("latest", self.best_score if math.isfinite(self.best_score) else None, **extra)

    def load_latest(self) -> None:
        payload = load_checkpoint(self.checkpoint("latest"), kind="dqn", stage_hint="01_train_dqn.py")
        if "optimizer_state" not in payload:
            raise UserError(f"{self.checkpoint('latest')} holds no resume state")
        if payload["model_config"] != self.model_config or payload["env_config"] != self.env_config:
            raise UserError("latest.pt was trained with a different network or game; pass the same flags "
                            f"(saved: {payload['model_config']}, {payload['env_config']['game']})")
        self.online.load_state_dict(payload["state_dict"])
        self.target.load_state_dict(payload["target_state_dict"])
        self.optimizer.load_state_dict(payload["optimizer_state"])
        self.step, self.updates, self.games = payload["step"], payload["updates"], payload["games"]
        self.elapsed_before = payload["wall_s"]
        self.best_score = payload["best_score"] if payload["best_score"] is not None else -math.inf
        self.skill_reached = list(payload["skill_reached"])
        self.recent_scores = list(payload["recent_scores"])
        self.rng.bit_generator.state = payload["numpy_rng"]
        torch.set_rng_state(payload["torch_rng"])
        if self.rnd and payload.get("rnd_state"):
            self.rnd.load_state_dict(payload["rnd_state"])
            self.rnd_optimizer.load_state_dict(payload["rnd_optimizer_state"])

    def wall(self) -> float:
        return self.elapsed_before + time.monotonic() - self.start_time

    # ---- acting and learning -----------------------------------------------------------------
    def exploration(self) -> float:
        a = self.args
        if a.exploration == "boltzmann":
            return schedule(self.step, a.temperature_start, a.temperature_end, a.eps_decay_steps, a.eps_schedule)
        return schedule(self.step, a.eps_start, a.eps_end, a.eps_decay_steps, a.eps_schedule)

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: float, random_only: bool) -> np.ndarray:
        n, num_actions = len(obs), self.env_config["num_actions"]
        if random_only:
            return self.rng.integers(0, num_actions, n)
        q = self.forward(to_model_input(obs, self.device, self.args.channels_last)).float()
        if self.args.exploration == "boltzmann":
            probs = torch.softmax(q / explore, dim=1).cpu().numpy().astype(np.float64)
            cumulative = probs.cumsum(axis=1)
            return np.minimum((cumulative < self.rng.random((n, 1)) * cumulative[:, -1:]).sum(axis=1),
                              num_actions - 1)
        greedy = q.argmax(dim=1).cpu().numpy()
        random_actions = self.rng.integers(0, num_actions, n)
        return np.where(self.rng.random(n) < explore, random_actions, greedy)

    def intrinsic_rewards(self, next_obs: np.ndarray) -> np.ndarray:
        """RND novelty of the newest frames, scaled by the running std of all novelties so far."""
        with torch.no_grad():
            errors = self.rnd.errors(torch.as_tensor(next_obs[:, -1]).to(self.device)).cpu().numpy()
        for value in errors:  # Welford running variance
            count, mean, m2 = self.rnd_stats
            count += 1
            delta = value - mean
            mean += delta / count
            self.rnd_stats = np.array([count, mean, m2 + delta * (value - mean)])
        std = math.sqrt(self.rnd_stats[2] / max(1.0, self.rnd_stats[0])) + 1e-8
        return errors / std

    def learn(self) -> None:
        a = self.args
        beta = a.per_beta + (1.0 - a.per_beta) * min(1.0, self.step / a.total_steps)
        batch = self.replay.sample(a.batch_size, self.rng, beta)
        obs = to_model_input(batch["obs"], self.device, a.channels_last, scale=True)
        next_obs = to_model_input(batch["next_obs"], self.device, a.channels_last, scale=True)
        actions = torch.as_tensor(batch["actions"], device=self.device)
        returns = torch.as_tensor(batch["returns"], device=self.device)
        bootstrap = torch.as_tensor(batch["bootstrap"], device=self.device)
        weights = torch.as_tensor(batch["weights"], device=self.device)
        target = td_targets(self.forward, self.target_forward, next_obs, returns, bootstrap, bool(a.double))
        q = self.forward(obs).gather(1, actions[:, None]).squeeze(1)
        loss = (weights * F.smooth_l1_loss(q, target, reduction="none")).mean()
        if not torch.isfinite(loss):
            self.save_latest()
            raise UserError(f"non-finite loss at step {self.step} (update {self.updates}); saved "
                            f"{self.checkpoint('latest')} from before it. Try a lower --lr or --grad-clip 10")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.online.parameters(), a.grad_clip)
        self.optimizer.step()
        if a.per:
            self.replay.update_priorities(batch["indices"], (target - q).detach().cpu().numpy())
        if self.rnd:
            rnd_loss = self.rnd.errors(torch.as_tensor(batch["obs"][:, -1]).to(self.device)).mean()
            self.rnd_optimizer.zero_grad(set_to_none=True)
            rnd_loss.backward()
            self.rnd_optimizer.step()
        self.updates += 1
        if self.updates % a.target_update == 0:
            self.target.load_state_dict(self.online.state_dict())
        self.loss_sum += loss.item()
        self.q_sum += q.detach().mean().item()
        self.loss_count += 1

    def learn_many(self, count: int) -> None:
        for _ in range(count):
            self.learn()

    # ---- evaluation, logging ------------------------------------------------------------------
    def evaluate_and_save(self, writer, progress) -> float:
        policy = DQNPolicy(self.online, self.model_config, self.env_config, self.device, self.step)
        result = evaluate_policy(policy, self.args.eval_episodes, self.args.eval_epsilon,
                                 self.args.eval_max_frames, seed=self.args.seed + 1000 + self.step)
        self.online.train()
        score = result["mean"]
        self.last_eval_step = self.step
        row = {"step": self.step, "frames": self.step * self.env_config["frame_skip"], "wall_s": self.wall(),
               "eval_mean": score, "eval_std": result["std"], "eval_min": result["min"],
               "eval_max": result["max"], "episodes": result["episodes"],
               "zero_reward_life_share": result["zero_reward_life_share"]}
        append_csv(self.out_dir / "eval_log.csv", EVAL_LOG_FIELDS, row)
        if writer:
            writer.add_scalar("eval/mean", score, self.step)
            writer.add_scalar("eval/mean_vs_wall_minutes", score, int(self.wall() / 60))
        progress.write(f"eval @ step {self.step:,} ({self.wall() / 60:.1f} min): mean {score:.1f} "
                       f"± {result['std']:.1f} (min {result['min']:.0f}, max {result['max']:.0f})")
        if score > self.best_score:
            self.best_score = score
            self.save_policy("best", score)
        for level, threshold in enumerate(self.args.skill_thresholds, start=1):
            if score >= threshold and threshold not in self.skill_reached:
                self.skill_reached.append(threshold)
                self.save_policy(f"skill_level_{level}", score, skill_level=level, threshold=threshold,
                                 threshold_reached=True)
                progress.write(f"skill level {level} (mean >= {threshold:g}) reached: skill_level_{level}.pt")
        self.save_latest()
        return score

    def keep_best_as_top_level(self) -> None:
        """A run that reached no threshold still leaves a played level for stage 2: its best network becomes
        skill_level_1.pt, labelled with its measured mean and threshold_reached false."""
        best = self.checkpoint("best")
        if self.skill_reached or not best.exists():
            return
        payload = load_checkpoint(best, kind="dqn", stage_hint="01_train_dqn.py")
        threshold = self.args.skill_thresholds[0]
        save_checkpoint(self.checkpoint("skill_level_1"), **{**payload, "skill_level": 1, "threshold": threshold,
                                                                "threshold_reached": False})
        print(f"no evaluation reached {threshold:g}: best.pt (mean {payload['eval_score']:.1f}) saved as "
              f"skill_level_1.pt, marked threshold_reached false")

    def log_train(self, writer, sps: float, ups: float, explore: float) -> None:
        recent = float(np.mean(self.recent_scores[-20:])) if self.recent_scores else float("nan")
        loss = self.loss_sum / max(1, self.loss_count)
        q_mean = self.q_sum / max(1, self.loss_count)
        row = {"step": self.step, "frames": self.step * self.env_config["frame_skip"], "wall_s": self.wall(),
               "games": self.games, "epsilon": explore, "recent_score": recent, "loss": loss, "q_mean": q_mean,
               "steps_per_s": sps, "updates_per_s": ups}
        append_csv(self.out_dir / "train_log.csv", TRAIN_LOG_FIELDS, row)
        if writer:
            for key in ("recent_score", "loss", "q_mean", "epsilon", "steps_per_s", "updates_per_s"):
                if math.isfinite(row[key]):
                    writer.add_scalar(f"train/{key}", row[key], self.step)
        if self.args.wandb:
            import wandb

            wandb.log(row, step=self.step)
        self.loss_sum = self.q_sum = 0.0
        self.loss_count = 0

    # ---- the loop --------------------------------------------------------------------------------
    def fill_replay(self, env, obs: np.ndarray, steps: int, use_policy: bool) -> tuple[np.ndarray, np.ndarray]:
        """Fill the replay without learning (random play, or the restored policy after --resume)."""
        self.replay.start(obs)
        lives = self.last_lives
        for _ in tqdm(range(math.ceil(steps / self.args.num_envs)), desc="refilling replay", leave=False,
                      disable=steps <= 0):
            actions = self.act(obs, self.exploration(), random_only=not use_policy)
            obs, lives = self.env_step(env, actions, lives, count=False)
        return obs, lives

    def env_step(self, env, actions: np.ndarray, lives: np.ndarray, count: bool = True,
                 overlap=None) -> tuple[np.ndarray, np.ndarray]:
        """Step all games (running `overlap`, the updates, while the emulator works) and store the transitions."""
        if overlap and not self.args.overlap:
            overlap()
        env.send(actions.astype(np.int32))
        if overlap and self.args.overlap:
            overlap()
        next_obs, raw, terminated, truncated, info = env.recv()
        a = self.args
        over = game_over_mask(terminated, truncated, info["lives"], lives)
        rewards = np.clip(raw, -1.0, 1.0).astype(np.float32) - a.living_penalty
        rewards -= a.life_loss_penalty * terminated
        if self.rnd:
            rewards += a.rnd_coef * self.intrinsic_rewards(next_obs)
        self.replay.add(actions, rewards, terminated | truncated, next_obs, over)
        self.game_returns += raw
        if count:
            self.step += len(actions)
            for i in np.flatnonzero(over):
                self.recent_scores.append(float(self.game_returns[i]))
                self.games += 1
        self.game_returns[over] = 0.0
        self.recent_scores = self.recent_scores[-100:]
        return next_obs, info["lives"].copy()

    def train(self) -> None:
        a = self.args
        self.start_time = time.monotonic()
        if a.resume:
            self.load_latest()
            print(f"resuming at step {self.step:,} ({self.updates:,} updates, best eval {self.best_score:.1f})")
        writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(Path(a.log_dir) / "dqn" / time.strftime("%Y%m%d-%H%M%S")))
        except ImportError:
            print("tensorboard not installed: no TensorBoard events")
        if a.wandb:
            try:
                import wandb

                wandb.init(project="neural-breakout-dqn", config=self.config_dict())
            except ImportError:
                print("wandb not installed: --wandb ignored")
                a.wandb = False
        if not a.resume:
            for name in ("train_log.csv", "eval_log.csv"):
                (self.out_dir / name).unlink(missing_ok=True)
            self.save_policy("skill_level_0", None, skill_level=0, threshold=None)
        env = make_vector_env(self.env_config, a.num_envs, training=True, num_threads=a.env_threads)
        obs, info = env.reset(seed=a.seed + self.step)
        self.last_lives = info["lives"].copy()
        self.game_returns = np.zeros(a.num_envs)
        obs, lives = self.fill_replay(env, obs, a.learning_starts if a.resume else 0, use_policy=True)
        budget_s = a.time_budget * 60 if a.time_budget else math.inf
        session_start = time.monotonic()
        last_save = last_log_time = time.monotonic()
        last_log_step, last_log_updates = self.step, self.updates
        next_eval = (self.step // a.eval_every + 1) * a.eval_every
        next_log = self.step + a.log_every
        update_credit = 0.0
        progress = tqdm(total=a.total_steps, initial=self.step, unit="step", dynamic_ncols=True, smoothing=0.05,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0)
        try:
            while self.step < a.total_steps and time.monotonic() - session_start < budget_s:
                learning = self.step >= a.learning_starts
                explore = self.exploration()
                actions = self.act(obs, explore, random_only=not learning)
                num_updates = 0
                if learning and len(self.replay) >= a.batch_size:
                    update_credit += a.num_envs * a.updates_per_step
                    num_updates, update_credit = int(update_credit), update_credit - int(update_credit)
                overlap = functools.partial(self.learn_many, num_updates) if num_updates else None
                obs, lives = self.env_step(env, actions, lives, overlap=overlap)
                progress.update(a.num_envs)
                if self.step >= next_log:
                    now = time.monotonic()
                    sps = (self.step - last_log_step) / (now - last_log_time)
                    ups = (self.updates - last_log_updates) / (now - last_log_time)
                    self.log_train(writer, sps, ups, explore)
                    recent = np.mean(self.recent_scores[-20:]) if self.recent_scores else float("nan")
                    progress.set_postfix(eps=f"{explore:.3f}", score=f"{recent:.1f}", sps=f"{sps:.0f}",
                                         ups=f"{ups:.1f}")
                    last_log_time, last_log_step, last_log_updates = now, self.step, self.updates
                    next_log += a.log_every
                if self.step >= next_eval:
                    self.evaluate_and_save(writer, progress)
                    next_eval += a.eval_every
                    last_save = time.monotonic()
                if time.monotonic() - last_save > a.save_every_min * 60:
                    self.save_latest()
                    last_save = time.monotonic()
            progress.close()
            if self.last_eval_step != self.step:
                self.evaluate_and_save(writer, progress)
            self.keep_best_as_top_level()
        except KeyboardInterrupt:
            progress.close()
            self.save_latest()
            print(f"\ninterrupted at step {self.step:,}: saved {self.checkpoint('latest')} (resume with --resume)")
            raise
        finally:
            env.close()
            if writer:
                writer.close()
        print(f"done: {self.step:,} steps, {self.updates:,} updates in {self.wall() / 60:.1f} min; "
              f"best eval {self.best_score:.1f}; skill levels reached {self.skill_reached}; -> {self.out_dir}")


def main() -> None:
    args = parse_args()
    args.game = resolve_game(args.game)
    if args.evaluate:
        run_evaluation(args)
        return
    refuse_to_replace(dqn_checkpoint(args.checkpoint_dir, "latest"), args.resume, args.fresh)
    for folder in (dqn_dir(args.checkpoint_dir), Path(args.log_dir)):
        check_writable(folder)
    trainer = Trainer(args)
    print(f"device {trainer.device}, {trainer.threads} threads, preset {args.preset}, game {args.game}, "
          f"{args.num_envs} envs, net {args.conv_widths}+{args.fc_width}, replay {trainer.replay.capacity:,}")
    trainer.train()


if __name__ == "__main__":
    run_main(main)
