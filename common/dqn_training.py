"""Stage 1's learner: a DQN (Double, dueling, n-step, prioritized replay) trained on ALE's vector env.

01_train_dqn.py parses the flags and calls `Trainer(args).train()`; tests and bench/ use the Trainer
directly. Checkpoints are written to <checkpoint-dir>/dqn (common/paths.py).
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

from common.atari import game_over_mask, make_env_config, make_vector_env
from common.cli import pick_device, set_threads
from common.dqn import DeepMindRMSprop, DQNPolicy, build_q_network, evaluate_policy, td_targets, to_model_input
from common.errors import UserError
from common.io import load_checkpoint, save_checkpoint
from common.paths import dqn_checkpoint, dqn_dir
from common.plots import plot_eval_curves
from common.replay import FrameReplay

TRAIN_LOG_FIELDS = ["step", "frames", "wall_s", "games", "epsilon", "recent_score", "loss", "q_mean",
                    "steps_per_s", "updates_per_s"]
EVAL_LOG_FIELDS = ["step", "frames", "wall_s", "eval_mean", "eval_std", "eval_min", "eval_max", "episodes",
                   "zero_reward_life_share"]


def linear_schedule(step: int, start: float, end: float, decay_steps: int) -> float:
    """Linear anneal from start to end over decay_steps, then flat."""
    return start + min(1.0, step / decay_steps) * (end - start)


def append_csv(path: Path, fields: list[str], row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


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
                             "dueling": bool(args.dueling), "layer_norm": bool(args.layer_norm)}
        torch.manual_seed(args.seed)
        self.rng = np.random.default_rng(args.seed)
        self.online = build_q_network(self.model_config).to(self.device)
        if args.channels_last:
            self.online.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.online) if args.compile else self.online
        self.init_learner()
        self.step = self.updates = self.games = 0
        self.elapsed_before = 0.0
        self.best_score = -math.inf
        self.skill_reached: list[float] = []
        self.recent_scores: list[float] = []
        self.loss_sum = self.q_sum = 0.0
        self.loss_count = 0
        self.last_eval_step = -1
        self.start_time = time.monotonic()

    def init_learner(self) -> None:
        """The target network, optimizer and replay of Double DQN."""
        args = self.args
        self.target = build_q_network(self.model_config).to(self.device)
        self.target.load_state_dict(self.online.state_dict())
        self.target.requires_grad_(False)
        if args.channels_last:
            self.target.to(memory_format=torch.channels_last)
        if args.optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.online.parameters(), lr=args.lr, eps=args.adam_eps,
                                              fused=self.device.type in ("cpu", "cuda"))  # one kernel for all tensors
        else:
            self.optimizer = DeepMindRMSprop(self.online.parameters(), lr=args.lr)
        self.target_forward = torch.compile(self.target) if args.compile else self.target
        self.replay = FrameReplay(args.replay_size, args.num_envs, args.stack, args.n_step, args.gamma,
                                  prioritized=bool(args.per), alpha=args.per_alpha)

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
        extra = dict(self.learner_state(), optimizer_state=self.optimizer.state_dict(), updates=self.updates,
                     games=self.games,
                     best_score=self.best_score if math.isfinite(self.best_score) else None,
                     skill_reached=self.skill_reached, recent_scores=self.recent_scores[-100:],
                     numpy_rng=self.rng.bit_generator.state, torch_rng=torch.get_rng_state())
        self.save_policy("latest", self.best_score if math.isfinite(self.best_score) else None, **extra)

    def learner_state(self) -> dict:
        return {"target_state_dict": {k: v.cpu() for k, v in self.target.state_dict().items()}}

    def load_learner_state(self, payload: dict) -> None:
        self.target.load_state_dict(payload["target_state_dict"])

    def load_latest(self) -> None:
        payload = load_checkpoint(self.checkpoint("latest"), kind="dqn", stage_hint="01_train_dqn.py")
        if "optimizer_state" not in payload:
            raise UserError(f"{self.checkpoint('latest')} holds no resume state")
        if payload["model_config"] != self.model_config or payload["env_config"] != self.env_config:
            raise UserError("latest.pt was trained with a different network or game; pass the same flags "
                            f"(saved: {payload['model_config']}, {payload['env_config']['game']})")
        self.online.load_state_dict(payload["state_dict"])
        self.load_learner_state(payload)
        self.optimizer.load_state_dict(payload["optimizer_state"])
        self.step, self.updates, self.games = payload["step"], payload["updates"], payload["games"]
        self.elapsed_before = payload["wall_s"]
        self.best_score = payload["best_score"] if payload["best_score"] is not None else -math.inf
        self.skill_reached = list(payload["skill_reached"])
        self.recent_scores = list(payload["recent_scores"])
        self.rng.bit_generator.state = payload["numpy_rng"]
        torch.set_rng_state(payload["torch_rng"])

    def wall(self) -> float:
        return self.elapsed_before + time.monotonic() - self.start_time

    # ---- acting and learning -----------------------------------------------------------------
    def exploration(self) -> float:
        a = self.args
        return linear_schedule(self.step, a.eps_start, a.eps_end, a.eps_decay_steps)

    @torch.no_grad()
    def q_values(self, obs: np.ndarray) -> torch.Tensor:
        """(N, actions) float Q-values of the online network for a batch of uint8 observations."""
        return self.forward(to_model_input(obs, self.device, self.args.channels_last)).float()

    def epsilon_greedy(self, q: torch.Tensor, explore: float) -> np.ndarray:
        """The greedy action of each row of q, or a random one with probability `explore`."""
        n = len(q)
        greedy = q.argmax(dim=1).cpu().numpy()
        random_actions = self.rng.integers(0, self.env_config["num_actions"], n)
        return np.where(self.rng.random(n) < explore, random_actions, greedy)

    def act(self, obs: np.ndarray, explore: float, random_only: bool) -> np.ndarray:
        if random_only:
            return self.rng.integers(0, self.env_config["num_actions"], len(obs))
        return self.epsilon_greedy(self.q_values(obs), explore)

    def learning_rate(self) -> float:
        """--lr, or with --lr-end the linear anneal over the share of the run done (time or steps)."""
        a = self.args
        if a.lr_end is None:
            return a.lr
        done = self.step / a.total_steps
        if a.time_budget:
            done = max(done, self.wall() / (a.time_budget * 60))
        return a.lr + min(done, 1.0) * (a.lr_end - a.lr)

    def apply_learning_rate(self) -> None:
        if self.args.lr_end is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate()

    def optimize(self, loss: torch.Tensor, q: torch.Tensor) -> None:
        """One gradient step on `loss` (q: the batch's Q-values, for the log); a non-finite loss saves
        latest.pt with the weights from before it and stops the run."""
        if not torch.isfinite(loss):
            self.save_latest()
            raise UserError(f"non-finite loss at step {self.step} (update {self.updates}); saved "
                            f"{self.checkpoint('latest')} from before it. Try a lower --lr or --grad-clip 10")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.online.parameters(), self.args.grad_clip)
        self.optimizer.step()
        self.updates += 1
        self.loss_sum += loss.item()
        self.q_sum += q.detach().mean().item()
        self.loss_count += 1

    def learn(self) -> None:
        a = self.args
        self.apply_learning_rate()
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
        self.optimize(loss, q)
        if a.per:
            self.replay.update_priorities(batch["indices"], (target - q).detach().cpu().numpy())
        if self.updates % a.target_update == 0:
            self.target.load_state_dict(self.online.state_dict())

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
        plot_eval_curves({"evaluation": self.out_dir / "eval_log.csv"}, self.out_dir / "eval_curve.png",
                         f"{self.env_config['game']}, preset {self.args.preset}")
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
        over = game_over_mask(terminated, truncated, info["lives"], lives)
        rewards = np.clip(raw, -1.0, 1.0).astype(np.float32)
        self.replay.add(actions, rewards, terminated | truncated, next_obs, over)
        self.count_games(raw, over, count)
        return next_obs, info["lives"].copy()

    def count_games(self, raw_rewards: np.ndarray, over: np.ndarray, count: bool = True) -> None:
        """Add one step of every game to the step counter and the finished games' scores."""
        self.game_returns += raw_rewards
        if count:
            self.step += len(raw_rewards)
            for i in np.flatnonzero(over):
                self.recent_scores.append(float(self.game_returns[i]))
                self.games += 1
        self.game_returns[over] = 0.0
        self.recent_scores = self.recent_scores[-100:]

    def open_logger(self):
        """TensorBoard events under <log-dir>/dqn/<time>, when tensorboard is installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("tensorboard not installed: no TensorBoard events")
            return None
        return SummaryWriter(str(Path(self.args.log_dir) / "dqn" / time.strftime("%Y%m%d-%H%M%S")))

    def train(self) -> None:
        """Resume or start, run the loop until the budget, evaluate once more, and leave a played level."""
        a = self.args
        self.start_time = time.monotonic()
        if a.resume:
            self.load_latest()
            print(f"resuming at step {self.step:,} ({self.updates:,} updates, best eval {self.best_score:.1f})")
        writer = self.open_logger()
        if not a.resume:
            for name in ("train_log.csv", "eval_log.csv"):
                (self.out_dir / name).unlink(missing_ok=True)
            self.save_policy("skill_level_0", None, skill_level=0, threshold=None)
        env = make_vector_env(self.env_config, a.num_envs, training=True, num_threads=a.env_threads)
        progress = tqdm(total=a.total_steps, initial=self.step, unit="step", dynamic_ncols=True, smoothing=0.05,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0)
        try:
            self.run_loop(env, writer, progress)
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

    def start_schedule(self) -> None:
        """Clocks and step marks for logging, evaluation and saving, from the current step on."""
        a = self.args
        self.session_start = self.last_save = self.last_log_time = time.monotonic()
        self.last_log_step, self.last_log_updates = self.step, self.updates
        self.next_eval = (self.step // a.eval_every + 1) * a.eval_every
        self.next_log = self.step + a.log_every

    def budget_left(self) -> bool:
        a = self.args
        budget_s = a.time_budget * 60 if a.time_budget else math.inf
        return self.step < a.total_steps and time.monotonic() - self.session_start < budget_s

    def on_schedule(self, writer, progress: tqdm, explore: float) -> None:
        """Log, evaluate and save when their step marks or clocks come up."""
        a = self.args
        if self.step >= self.next_log:
            now = time.monotonic()
            sps = (self.step - self.last_log_step) / (now - self.last_log_time)
            ups = (self.updates - self.last_log_updates) / (now - self.last_log_time)
            self.log_train(writer, sps, ups, explore)
            recent = np.mean(self.recent_scores[-20:]) if self.recent_scores else float("nan")
            progress.set_postfix(eps=f"{explore:.3f}", score=f"{recent:.1f}", sps=f"{sps:.0f}", ups=f"{ups:.1f}")
            self.last_log_time, self.last_log_step, self.last_log_updates = now, self.step, self.updates
            while self.next_log <= self.step:
                self.next_log += a.log_every
        if self.step >= self.next_eval:
            self.evaluate_and_save(writer, progress)
            while self.next_eval <= self.step:
                self.next_eval += a.eval_every
            self.last_save = time.monotonic()
        if time.monotonic() - self.last_save > a.save_every_min * 60:
            self.save_latest()
            self.last_save = time.monotonic()

    def run_loop(self, env, writer, progress: tqdm) -> None:
        """Act in every game at once, learn while the emulator steps, log, evaluate and save on schedule."""
        a = self.args
        obs, info = env.reset(seed=a.seed + self.step)
        self.last_lives = info["lives"].copy()
        self.game_returns = np.zeros(a.num_envs)
        obs, lives = self.fill_replay(env, obs, a.learning_starts if a.resume else 0, use_policy=True)
        self.start_schedule()
        update_credit = 0.0
        while self.budget_left():
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
            self.on_schedule(writer, progress, explore)
