"""The DQN model (3 conv + 2 FC), the acting policy other stages load, and learning pieces.

Checkpoints are written by 01_train_dqn.py through common.io.save_checkpoint(kind="dqn"):
{'model_config', 'env_config', 'state_dict', 'step', 'eval_score', ...}.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from common.errors import UserError
from common.io import load_checkpoint

STAGE_HINT = "01_train_dqn.py"


def conv_output_size(size: int = 84) -> int:
    for kernel, stride in ((8, 4), (4, 2), (3, 1)):
        size = (size - kernel) // stride + 1
    return size


class QNetwork(nn.Module):
    """Nature-DQN layout with free widths; optional dueling head. Input: uint8 (B, stack, 84, 84).

    layer_norm normalises every hidden layer before its ReLU, as PQN's network does: it keeps Q-learning
    stable without a target network or a replay. The convs' norm is GroupNorm with one group, a
    LayerNorm over (channels, height, width) with per-channel scales, which stays fast in channels-last
    memory (a LayerNorm over the same axes made an update 1.3-1.5x slower there)."""

    def __init__(self, num_actions: int, stack: int = 8, conv_widths: tuple[int, int, int] = (32, 64, 64),
                 fc_width: int = 512, dueling: bool = False, layer_norm: bool = False):
        super().__init__()
        c1, c2, c3 = conv_widths
        layers: list[nn.Module] = []
        channels = stack
        for width, kernel, stride in ((c1, 8, 4), (c2, 4, 2), (c3, 3, 1)):
            layers.append(nn.Conv2d(channels, width, kernel, stride=stride))
            if layer_norm:
                layers.append(nn.GroupNorm(1, width))  # LayerNorm over (C, H, W); faster channels-last
            layers.append(nn.ReLU())
            channels = width
        self.convs = nn.Sequential(*layers, nn.Flatten())
        flat = c3 * conv_output_size() ** 2
        self.dueling = dueling
        self.fc = nn.Sequential(nn.Linear(flat, fc_width), *([nn.LayerNorm(fc_width)] if layer_norm else []),
                                nn.ReLU())
        self.head = nn.Linear(fc_width, num_actions + (1 if dueling else 0))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: uint8 frames, or frames already scaled to [0, 1] by `to_model_input(..., scale=True)`."""
        x = obs.float().div_(255.0) if obs.dtype == torch.uint8 else obs
        out = self.head(self.fc(self.convs(x)))
        if not self.dueling:
            return out
        value, advantage = out[:, :1], out[:, 1:]
        return value + advantage - advantage.mean(dim=1, keepdim=True)


def build_q_network(model_config: dict) -> QNetwork:
    return QNetwork(model_config["num_actions"], model_config["stack"], tuple(model_config["conv_widths"]),
                    model_config["fc_width"], model_config["dueling"], model_config.get("layer_norm", False))


def to_model_input(obs: np.ndarray | torch.Tensor, device: torch.device | str,
                   channels_last: bool = False, scale: bool = False) -> torch.Tensor:
    """uint8 frames on the device; `scale` converts them to floats in [0, 1] once, for a batch that
    several forward passes read (the online and target nets both see the next observations)."""
    tensor = torch.as_tensor(obs).to(device, non_blocking=True)
    if channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor.float().div_(255.0) if scale else tensor


class DQNPolicy:
    """A trained (or untrained) agent: obs (N, stack, 84, 84) uint8, oldest frame first -> actions."""

    def __init__(self, net: QNetwork, model_config: dict, env_config: dict, device: str | torch.device = "cpu",
                 step: int = 0, eval_score: float | None = None, threshold: float | None = None,
                 threshold_reached: bool | None = None):
        self.net = net.to(device).eval()
        self.model_config, self.env_config = model_config, env_config
        self.device = torch.device(device)
        self.step, self.eval_score = step, eval_score
        # a skill level's evaluation-mean threshold, and whether its evaluation mean reached it
        self.threshold, self.threshold_reached = threshold, threshold_reached
        self.num_actions = model_config["num_actions"]

    @torch.inference_mode()
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        return self.net(to_model_input(obs, self.device)).float().cpu().numpy()

    def act(self, obs: np.ndarray, epsilon: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
        obs = np.asarray(obs)
        if obs.ndim != 4 or obs.shape[1:] != (self.env_config["stack"], 84, 84):
            raise ValueError(f"expected obs of shape (N, {self.env_config['stack']}, 84, 84), got {obs.shape}")
        actions = self.q_values(obs).argmax(axis=1)
        if epsilon > 0:
            rng = rng or np.random.default_rng()
            explore = rng.random(len(actions)) < epsilon
            actions = np.where(explore, rng.integers(0, self.num_actions, len(actions)), actions)
        return actions.astype(np.int64)


def load_policy(path: str | Path, device: str = "cpu") -> DQNPolicy:
    """Load a dqn checkpoint (skill_level_k.pt, best.pt, latest.pt); bad files are a UserError."""
    payload = load_checkpoint(path, kind="dqn", stage_hint=STAGE_HINT, map_location="cpu")
    try:
        model_config, env_config = payload["model_config"], payload["env_config"]
        net = build_q_network(model_config)
        net.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise UserError(f"{path} is a damaged dqn checkpoint ({type(err).__name__}: {str(err)[:200]}): "
                        f"re-run {STAGE_HINT}") from None
    threshold = payload.get("threshold")
    return DQNPolicy(net, model_config, env_config, device, payload.get("step", 0), payload.get("eval_score"),
                     threshold, payload.get("threshold_reached", threshold is not None))


def td_targets(online: nn.Module, target: nn.Module, next_obs: torch.Tensor, returns: torch.Tensor,
               bootstrap: torch.Tensor, double: bool = True) -> torch.Tensor:
    """returns + bootstrap * Q_target(s', a*), a* = argmax of the online net (Double DQN) or the target."""
    with torch.no_grad():
        next_target = target(next_obs)
        if double:
            best = online(next_obs).argmax(dim=1, keepdim=True)
        else:
            best = next_target.argmax(dim=1, keepdim=True)
        return returns + bootstrap * next_target.gather(1, best).squeeze(1)


class DeepMindRMSprop(torch.optim.Optimizer):
    """The RMSProp of the Nature DQN (centred: divides by sqrt(E[g^2] - E[g]^2 + eps), eps inside)."""

    def __init__(self, params, lr: float = 2.5e-4, decay: float = 0.95, eps: float = 0.01):
        super().__init__(params, {"lr": lr, "decay": decay, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["mean_grad"] = torch.zeros_like(param)
                    state["mean_square"] = torch.zeros_like(param)
                grad, decay = param.grad, group["decay"]
                state["mean_grad"].mul_(decay).add_(grad, alpha=1 - decay)
                state["mean_square"].mul_(decay).addcmul_(grad, grad, value=1 - decay)
                denom = (state["mean_square"] - state["mean_grad"].square() + group["eps"]).sqrt_()
                param.addcdiv_(grad, denom, value=-group["lr"])


def evaluate_policy(policy: DQNPolicy, episodes: int, epsilon: float = 0.05, max_episode_frames: int = 108_000,
                    seed: int = 0, max_parallel: int = 16) -> dict:
    """Play `episodes` full games (no life-loss ends, unclipped rewards).

    Each parallel env plays a fixed share of the games, so short games are not over-counted.
    Returns per-game returns/lengths and per-life returns (a life ends when the lives counter drops).
    """
    from common.atari import game_over_mask, make_vector_env

    num_envs = max(1, min(episodes, max_parallel))
    quota = np.full(num_envs, episodes // num_envs) + (np.arange(num_envs) < episodes % num_envs)
    env = make_vector_env(policy.env_config, num_envs, training=False, max_episode_frames=max_episode_frames)
    rng = np.random.default_rng(seed)
    try:
        obs, info = env.reset(seed=seed)
        prev_lives = info["lives"].copy()
        game_return, life_return, game_steps = np.zeros(num_envs), np.zeros(num_envs), np.zeros(num_envs, int)
        games, lives_out = [], []
        done_games, life_index = np.zeros(num_envs, int), np.zeros(num_envs, int)
        while (done_games < quota).any():
            obs, reward, terminated, truncated, info = env.step(policy.act(obs, epsilon, rng))
            active = done_games < quota
            game_return += reward * active
            life_return += reward * active
            game_steps += active
            over = game_over_mask(terminated, truncated, info["lives"], prev_lives)
            life_lost = (info["lives"] < prev_lives) & ~over
            for i in np.flatnonzero(active & (life_lost | over)):
                lives_out.append({"env": int(i), "game_of_env": int(done_games[i]), "life": int(life_index[i]),
                                  "return": float(life_return[i])})
                life_return[i], life_index[i] = 0.0, life_index[i] + 1
            for i in np.flatnonzero(active & over):
                games.append({"env": int(i), "game_of_env": int(done_games[i]), "return": float(game_return[i]),
                              "steps": int(game_steps[i]), "truncated": bool(truncated[i])})
                done_games[i] += 1
                game_return[i], game_steps[i], life_index[i] = 0.0, 0, 0
            prev_lives = info["lives"].copy()
    finally:
        env.close()
    returns = np.array([g["return"] for g in games])
    life_returns = np.array([life["return"] for life in lives_out])
    return {"games": games, "lives": lives_out,
            "mean": float(returns.mean()), "std": float(returns.std()), "min": float(returns.min()),
            "max": float(returns.max()), "episodes": len(games),
            "zero_reward_life_share": float((life_returns == 0).mean()) if len(life_returns) else 0.0}
