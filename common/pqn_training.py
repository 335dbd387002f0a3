"""Stage 1's second learner: PQN (Gallici et al. 2024, "Simplifying Deep Temporal Difference Learning").

Q-learning without a replay or a target network: many games act at once for a short rollout, the
rollout's Q(lambda) returns are computed from the values seen while acting, and the network (with
LayerNorm, which keeps this stable) trains on the rollout for a few epochs of minibatches, then the
rollout is thrown away. Per agent step it does a small fraction of DQN's gradient work, so on a CPU
it sees several times as many frames in the same minutes. 01_train_dqn.py picks it with
`--learner pqn`; checkpoints, evaluations and skill levels are the DQN trainer's.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.atari import game_over_mask
from common.dqn import to_model_input
from common.dqn_training import Trainer


def lambda_returns(rewards: np.ndarray, ends: np.ndarray, values: np.ndarray, last_values: np.ndarray,
                   gamma: float, lam: float) -> np.ndarray:
    """Q(lambda) returns of one rollout, all (T, N) but last_values (N,).

    R_t = r_t + gamma * (1 - end_t) * (lam * R_{t+1} + (1 - lam) * V_{t+1}), where V_t = max_a Q(s_t, a)
    was read while acting and R_T = V_T = last_values (the state after the rollout). end_t: the
    transition t ended a life or a game, so nothing after it is bootstrapped into it.
    """
    steps = len(rewards)
    returns = np.empty_like(rewards)
    next_return, next_value = last_values, last_values
    for t in reversed(range(steps)):
        returns[t] = rewards[t] + gamma * (1.0 - ends[t]) * (lam * next_return + (1.0 - lam) * next_value)
        next_return, next_value = returns[t], values[t]
    return returns


class PQNTrainer(Trainer):
    """The DQN trainer's checkpoints, evaluations and logs around PQN's rollout-then-train loop."""

    def init_learner(self) -> None:
        self.optimizer = torch.optim.RAdam(self.online.parameters(), lr=self.args.lr)
        self.replay = None

    def learner_state(self) -> dict:
        return {}

    def load_learner_state(self, payload: dict) -> None:
        pass

    def train_on_rollout(self, obs: np.ndarray, actions: np.ndarray, returns: np.ndarray) -> None:
        """`--epochs` passes over the rollout in shuffled minibatches of `--batch-size`."""
        a = self.args
        self.apply_learning_rate()
        obs = obs.reshape(-1, *obs.shape[2:])
        actions = torch.as_tensor(actions.reshape(-1), device=self.device)
        returns = torch.as_tensor(returns.reshape(-1), device=self.device)
        for _ in range(a.epochs):
            order = self.rng.permutation(len(obs))
            for start in range(0, len(order) - a.batch_size + 1, a.batch_size):
                batch = order[start:start + a.batch_size]
                x = to_model_input(obs[batch], self.device, a.channels_last, scale=True)
                index = torch.as_tensor(batch, device=self.device)
                q = self.forward(x).gather(1, actions[index, None]).squeeze(1)
                self.optimize(F.mse_loss(q, returns[index]), q)

    def run_loop(self, env, writer, progress: tqdm) -> None:
        """Roll out --rollout-steps in every game, train on it, log, evaluate and save on schedule."""
        a = self.args
        num_envs, steps = a.num_envs, a.rollout_steps
        obs_buffer = np.empty((steps, num_envs, a.stack, 84, 84), dtype=np.uint8)
        actions = np.empty((steps, num_envs), dtype=np.int64)
        rewards = np.empty((steps, num_envs), dtype=np.float32)
        ends = np.empty((steps, num_envs), dtype=np.float32)
        values = np.empty((steps, num_envs), dtype=np.float32)
        obs, info = env.reset(seed=a.seed + self.step)
        lives = info["lives"].copy()
        self.game_returns = np.zeros(num_envs)
        self.start_schedule()
        explore = self.exploration()
        while self.budget_left():
            for t in range(steps):
                explore = self.exploration()
                q = self.q_values(obs)
                values[t] = q.max(dim=1).values.cpu().numpy()
                actions[t] = self.epsilon_greedy(q, explore)
                obs_buffer[t] = obs
                obs, raw, terminated, truncated, info = env.step(actions[t].astype(np.int32))
                over = game_over_mask(terminated, truncated, info["lives"], lives)
                rewards[t] = np.clip(raw, -1.0, 1.0)
                ends[t] = terminated | truncated
                lives = info["lives"].copy()
                self.count_games(raw, over)
                progress.update(num_envs)
            last_values = self.q_values(obs).max(dim=1).values.cpu().numpy()
            returns = lambda_returns(rewards, ends, values, last_values, a.gamma, a.q_lambda)
            self.train_on_rollout(obs_buffer, actions, returns)
            self.on_schedule(writer, progress, explore)
