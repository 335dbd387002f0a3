"""Replay memory that stores every frame once (uint8), n-step returns, prioritized sampling.

Each env writes its own stream; all envs advance together, so slot `t` holds, for every env,
the newest frame of observation t and the action/reward/done that followed it. A stacked
observation is rebuilt from frames t-stack+1..t; frames from before the current game's first
observation are zero, exactly like the env's own stack after a reset. A lost life ends an
episode for learning (done) but the frame stack runs on, as in the env.
"""
from __future__ import annotations

import numpy as np


class SumTree:
    """Binary sum-tree over `capacity` priorities; batch sampling and updates are vectorised."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 1
        while self.size < capacity:
            self.size *= 2
        self.nodes = np.zeros(2 * self.size, dtype=np.float64)  # node 1 is the root, leaves at size..

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def get(self, indices: np.ndarray) -> np.ndarray:
        return self.nodes[self.size + np.asarray(indices)]

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set leaf priorities, then recompute the parents level by level (duplicates are safe)."""
        nodes = self.size + np.asarray(indices, dtype=np.int64)
        self.nodes[nodes] = priorities
        nodes = np.unique(nodes // 2)
        while nodes[0] >= 1:
            self.nodes[nodes] = self.nodes[2 * nodes] + self.nodes[2 * nodes + 1]
            if nodes[0] == 1:
                break
            nodes = np.unique(nodes // 2)

    def find(self, prefix_sums: np.ndarray) -> np.ndarray:
        """Leaf index whose cumulative range holds each prefix sum (one descent for the batch)."""
        prefix = np.array(prefix_sums, dtype=np.float64)
        nodes = np.ones(len(prefix), dtype=np.int64)
        while nodes[0] < self.size:
            left = 2 * nodes
            left_sum = self.nodes[left]
            go_right = prefix >= left_sum
            prefix = np.where(go_right, prefix - left_sum, prefix)
            nodes = np.where(go_right, left + 1, left)
        return np.minimum(nodes - self.size, self.capacity - 1)


class FrameReplay:
    """Frame-deduplicated replay for `num_envs` parallel streams of `slots` steps each.

    Usage: start(first_obs); then per step add(actions, rewards, dones, next_obs, new_game).
    sample() returns stacked uint8 observations, n-step returns and bootstrap discounts.
    """

    def __init__(self, capacity: int, num_envs: int, stack: int, n_step: int = 1, gamma: float = 0.99,
                 prioritized: bool = False, alpha: float = 0.6, priority_eps: float = 1e-6,
                 frame_shape: tuple[int, int] = (84, 84)):
        self.slots = max(capacity // num_envs, stack + n_step + 1)
        self.num_envs, self.stack, self.n_step, self.gamma = num_envs, stack, n_step, gamma
        self.frames = np.zeros((self.slots, num_envs, *frame_shape), dtype=np.uint8)
        self.first = np.zeros((self.slots, num_envs), dtype=bool)
        self.actions = np.zeros((self.slots, num_envs), dtype=np.int64)
        self.rewards = np.zeros((self.slots, num_envs), dtype=np.float32)
        self.dones = np.zeros((self.slots, num_envs), dtype=bool)
        self.t = -1  # time index of the newest written frame
        self.prioritized, self.alpha, self.priority_eps = prioritized, alpha, priority_eps
        self.tree = SumTree(self.slots * num_envs) if prioritized else None
        self.max_priority = 1.0

    @property
    def capacity(self) -> int:
        return self.slots * self.num_envs

    def __len__(self) -> int:
        """Number of transitions that can be sampled now."""
        lo, hi = self._valid_range()
        return max(0, hi - lo + 1) * self.num_envs

    def _valid_range(self) -> tuple[int, int]:
        """Times t whose whole stack is still stored and whose t+n frame is written."""
        return max(0, self.t - self.slots + self.stack), self.t - self.n_step

    def _write_frames(self, obs: np.ndarray, new_game: np.ndarray) -> None:
        self.t += 1
        slot = self.t % self.slots
        self.frames[slot] = obs[:, -1]
        self.first[slot] = new_game
        if self.prioritized:
            # Overwriting slot t breaks the stacks of the oldest transitions; they must not be drawn.
            doomed = (self.t + np.arange(self.stack)) % self.slots
            self.tree.update(self._flat(np.repeat(doomed, self.num_envs), np.tile(np.arange(self.num_envs), self.stack)),
                             np.zeros(self.stack * self.num_envs))
            ready = self.t - self.n_step
            if ready >= self._valid_range()[0] and ready >= 0:
                envs = np.arange(self.num_envs)
                self.tree.update(self._flat(np.full(self.num_envs, ready % self.slots), envs),
                                 np.full(self.num_envs, self.max_priority ** self.alpha))

    def _flat(self, slots: np.ndarray, envs: np.ndarray) -> np.ndarray:
        return slots * self.num_envs + envs

    def start(self, obs: np.ndarray) -> None:
        """First observations (N, stack, H, W) of fresh games."""
        self._write_frames(obs, np.ones(self.num_envs, dtype=bool))

    def add(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray, next_obs: np.ndarray,
            new_game: np.ndarray) -> None:
        """Record what followed the newest observation, then the next observation.

        dones: the transition ends an episode for learning (life lost, game over, time limit).
        new_game: next_obs is the first observation of a new game (its older stack frames are 0).
        """
        slot = self.t % self.slots
        self.actions[slot] = actions
        self.rewards[slot] = rewards
        self.dones[slot] = dones
        self._write_frames(next_obs, new_game)

    def stacked(self, times: np.ndarray, envs: np.ndarray) -> np.ndarray:
        """Rebuild (B, stack, H, W) observations; frames before their game's start are zero."""
        offsets = np.arange(self.stack - 1, -1, -1)  # oldest first
        frame_times = times[:, None] - offsets[None, :]
        slots = frame_times % self.slots
        obs = self.frames[slots, envs[:, None]]
        # frame k (counting back from the newest) is stale if a game started after it
        starts = self.first[slots, envs[:, None]]  # (B, stack), oldest..newest
        started_later = np.flip(np.cumsum(np.flip(starts[:, 1:], axis=1), axis=1), axis=1) > 0
        stale = np.concatenate([started_later, np.zeros((len(times), 1), dtype=bool)], axis=1)
        obs[stale] = 0
        return obs

    def nstep(self, times: np.ndarray, envs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """n-step returns and bootstrap discounts (gamma^n, or 0 when the episode ended first)."""
        window = (times[:, None] + np.arange(self.n_step)[None, :]) % self.slots
        rewards = self.rewards[window, envs[:, None]]
        dones = self.dones[window, envs[:, None]]
        alive = np.concatenate([np.ones((len(times), 1), dtype=bool),
                                np.cumsum(dones[:, :-1], axis=1) == 0], axis=1)
        discounts = self.gamma ** np.arange(self.n_step)
        returns = (rewards * alive * discounts[None, :]).sum(axis=1)
        bootstrap = np.where(dones.any(axis=1), 0.0, self.gamma ** self.n_step)
        return returns.astype(np.float32), bootstrap.astype(np.float32)

    def sample(self, batch_size: int, rng: np.random.Generator, beta: float = 0.4) -> dict:
        lo, hi = self._valid_range()
        if hi < lo:
            raise ValueError("not enough transitions in the replay to sample")
        if self.prioritized:
            total = self.tree.total
            # stratified: one draw per equal slice of the total priority mass
            prefix = (np.arange(batch_size) + rng.random(batch_size)) * (total / batch_size)
            flat = self.tree.find(np.minimum(prefix, total * (1 - 1e-12)))
            slots, envs = flat // self.num_envs, flat % self.num_envs
            times = self.t - ((self.t - slots) % self.slots)
            probs = self.tree.get(flat) / total
            weights = (len(self) * np.maximum(probs, 1e-12)) ** (-beta)
            weights = (weights / weights.max()).astype(np.float32)
        else:
            times = rng.integers(lo, hi + 1, size=batch_size)
            envs = rng.integers(0, self.num_envs, size=batch_size)
            flat = self._flat(times % self.slots, envs)
            weights = np.ones(batch_size, dtype=np.float32)
        returns, bootstrap = self.nstep(times, envs)
        return {"obs": self.stacked(times, envs), "actions": self.actions[times % self.slots, envs],
                "returns": returns, "bootstrap": bootstrap,
                "next_obs": self.stacked(times + self.n_step, envs),
                "weights": weights, "indices": flat}

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        priorities = np.abs(td_errors) + self.priority_eps
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.update(indices, priorities ** self.alpha)
