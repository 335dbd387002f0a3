"""Stage 6: the NeuralBreakout API, the play script's modes and the control measures."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from common import paths
from common.action_to_latent import frame_view, knob_positions
from common.dataset import FIRE, LEFT, NOOP, RIGHT
from common.errors import UserError
from common.metrics import PSNR_CAP_DB
from common.neural_game import NeuralBreakout

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "06_play_neural_breakout.py"


def run_play(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def game(smoke_action_to_latent):
    return NeuralBreakout.load(smoke_action_to_latent, device="cpu")


@pytest.fixture(scope="module")
def start_frames(smoke_data, game):
    from common.dataset import read_frames, require_dataset

    episode = next(ep for ep in require_dataset(smoke_data) if ep.num_frames > game.context_frames + 10)
    return read_frames(episode, 0, game.context_frames)


# ---------------------------------------------------------------- the API contract
def test_step_returns_frames_and_temperature_zero_is_deterministic(game, start_frames):
    assert game.context_frames == len(start_frames) >= 1
    actions = [1, 2, 2, 3, 0, 3]
    runs = []
    for _ in range(2):
        game.reset(start_frames)
        runs.append(np.stack([game.step(a, event_temperature=0.0) for a in actions]))
    assert runs[0].shape == (len(actions), 210, 160, 3) and runs[0].dtype == np.uint8
    np.testing.assert_array_equal(runs[0], runs[1])
    game.reset(start_frames)
    sampled = game.step(2, temperature=1.5)
    assert sampled.shape == (210, 160, 3) and sampled.dtype == np.uint8


def test_a_seed_replays_a_game_with_its_random_events(smoke_action_to_latent, start_frames):
    """The random events are drawn with the game's own generator: the same seed and actions give the
    same game, and the draws are those of the world model's prior plus the map's correction for the key,
    then the ball committed as one object with the draws that follow."""
    actions = [1, 0, 2, 2, 3, 1, 0, 0]
    games = [NeuralBreakout.load(smoke_action_to_latent, seed=seed) for seed in (3, 3)]
    runs = []
    for game in games:
        game.reset(start_frames)
        runs.append(np.stack([game.step(a, event_temperature=1.0) for a in actions]))
    np.testing.assert_array_equal(runs[0], runs[1])
    game = games[0]
    game.reset(start_frames, seed=11)
    model = game.latent_model
    for action in actions:
        index, past = game.indices.clone(), game.frames.clone()
        codes = game.latents(past, torch.tensor([action]), 0.0, game.previous.clone(), torch.tensor([game.knob]))
        replay = torch.Generator()
        replay.set_state(game.generator.get_state())
        prior = model.event_prior(index, codes).float()
        logits = prior + game.action_model.event_correction(torch.tensor([action]), past, prior,
                                                            torch.tensor([game.since_ball]))
        events = model.sample_event(logits, 1.0, replay)
        drawn = game.generator.get_state()
        game.generator.set_state(replay.get_state())  # the ball is committed with the draws that follow
        expected = game._decode(index, codes, events, 1.0)[0][0].numpy()
        game.generator.set_state(drawn)
        np.testing.assert_array_equal(game.step(action, event_temperature=1.0), expected)


def test_the_key_decides_the_random_event_through_the_maps_event_head(smoke_action_to_latent, start_frames):
    """An untrained event head draws what the prior alone draws; a head that favours one class after FIRE
    makes FIRE draw it every time and leaves the other keys to the prior."""
    from common.action_to_latent import ActionToLatent

    game = NeuralBreakout.load(smoke_action_to_latent, seed=0)
    game.reset(start_frames)
    past = game.frames.repeat(64, 1, 1, 1, 1)
    index, keys = game.indices.repeat(64, 1, 1, 1), torch.tensor([0, 1, 2, 3] * 16)
    codes = game.latents(past, keys)

    def draws(action_model) -> torch.Tensor:
        game.action_model = action_model
        game.generator.manual_seed(5)
        return game.events(index, codes, 1.0, keys, past)

    trained = game.action_model
    without_head = ActionToLatent({**trained.config, "event_classes": 0})
    untrained_head = ActionToLatent(trained.config)
    assert untrained_head.event_classes == game.latent_model.event_classes
    assert torch.equal(draws(without_head), draws(untrained_head))
    favour = 7
    with torch.no_grad():
        untrained_head.event_action.weight.zero_()
        untrained_head.event_frames.weight.zero_()
        untrained_head.event_frames.bias.zero_()
        untrained_head.event_prior_in.weight.zero_()
        untrained_head.event_prior_in.bias.zero_()
        untrained_head.event_since.weight.zero_()
        untrained_head.event_action.weight[1, 0] = 1.0             # only FIRE lights hidden unit 0 ...
        untrained_head.event_head[1].weight.zero_()
        untrained_head.event_head[1].bias.zero_()
        untrained_head.event_head[1].weight[0, 0] = 1.0
        untrained_head.event_head[-1].weight[favour, 0] = 100.0    # ... which votes for one class
    forced = draws(untrained_head)
    assert (forced[keys == 1] == favour).all()
    assert torch.equal(forced[keys != 1], draws(without_head)[keys != 1])
    game.action_model = trained


def test_the_game_counts_the_steps_since_a_ball_on_its_own_frames(game, start_frames):
    from common.ball_sampler import SINCE_BALL_CAP, ball_in_play

    game.reset(start_frames)
    shown = ball_in_play(game.indices[0], game.ball_class)
    assert game.since_ball == (SINCE_BALL_CAP if not shown.any() else len(shown) - 1 - int(np.flatnonzero(shown.numpy())[-1]))
    for action in (1, 0, 0, 2, 3, 0):
        before = game.since_ball
        game.step(action, event_temperature=1.0)
        in_play = bool(ball_in_play(game.indices[:, -1], game.ball_class)[0])
        assert game.since_ball == (0 if in_play else min(before + 1, SINCE_BALL_CAP))


def test_steps_are_the_world_models_predictions_fed_back(game, start_frames):
    history = [3, 3, 3, 2, 3, 1]
    game.reset(start_frames, previous_actions=history)
    assert game.previous_count == 4 and game.previous[0].tolist() == history[-4:]
    assert game.knob_frame_skip == 4 and game.knob == pytest.approx(knob_positions(history, 4)[-1])  # every action
    for action in (1, 2, 3):
        past, previous, knob = game.frames.clone(), game.previous.clone(), torch.tensor([game.knob])
        argmax = game.latent_model.predict(past, game.latents(past, torch.tensor([action]), 0.0, previous,
                                                              knob))[0].numpy()
        stateless = game.step_batch(past, torch.tensor([action]), 0.0, previous, knob, event_temperature=0.0,
                                    since_ball=torch.tensor([game.since_ball]))[0].numpy()
        frame = game.step(action, event_temperature=0.0)   # the prior's most likely event, as predict()
        assert game.previous[0].tolist() == previous[0, 1:].tolist() + [action]
        assert game.knob == pytest.approx(knob_positions([action], 4, start=float(knob))[-1])
        np.testing.assert_array_equal(frame, stateless)  # the fast index-state path = the path from RGB frames
        # and = the model's predict(), bar the ball committed as one object (pixels of the ball's colour)
        ball_colour = game.palette[game.ball_class].numpy()
        committed = (frame == ball_colour).all(-1) | (argmax == ball_colour).all(-1)
        np.testing.assert_array_equal(frame[~committed], argmax[~committed])
        np.testing.assert_array_equal(game.frames[0, -1].numpy(), frame)
        np.testing.assert_array_equal(game.frames[0, :-1].numpy(), past[0, 1:].numpy())
        # the map's views, kept one new frame a step, are those of the newest frames
        frames_used = game.action_model.frames_used
        assert frames_used >= 1 and torch.equal(game.views, frame_view(game.frames[:, -frames_used:]))


def test_bad_inputs_raise_clear_errors(smoke_action_to_latent, start_frames):
    game = NeuralBreakout.load(smoke_action_to_latent)  # fresh: step() before any reset()
    with pytest.raises(RuntimeError, match="reset"):
        game.step(0)
    k = game.context_frames
    with pytest.raises(ValueError, match=rf"\({k}, 210, 160, 3\)"):
        game.reset(start_frames[:, :100])
    with pytest.raises(ValueError, match="uint8"):
        game.reset(start_frames.astype(np.float32))
    game.reset(start_frames)
    for bad in (4, -1, 2.0, "LEFT"):
        with pytest.raises(ValueError, match="action"):
            game.step(bad)
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            game.step(0, temperature=bad)
        with pytest.raises(ValueError, match="event_temperature"):
            game.step(0, event_temperature=bad)


def test_a_map_fit_to_another_world_model_is_refused(tmp_path, smoke_action_to_latent):
    """A retrained Stage 3 model must not play with the old action map."""
    shutil.copytree(paths.latent_dir(Path(smoke_action_to_latent)), paths.latent_dir(tmp_path))
    NeuralBreakout.load(tmp_path)
    best = paths.latent_checkpoint(tmp_path, "best")
    payload = torch.load(best, weights_only=True)
    payload["step"] += 1                       # the same layout, another file: as after a retraining
    torch.save(payload, best)
    with pytest.raises(UserError, match="04_collect.*05_train"):
        NeuralBreakout.load(tmp_path)
    result = run_play("--headless", "--steps", "2", "--checkpoint-dir", str(tmp_path))
    assert result.returncode == 2 and "05_train" in result.stderr and "Traceback" not in result.stderr


def test_missing_checkpoints_name_the_stage(tmp_path, smoke_action_to_latent):
    with pytest.raises(UserError, match="03"):
        NeuralBreakout.load(tmp_path)
    shutil.copytree(paths.latent_dir(Path(smoke_action_to_latent)), paths.latent_dir(tmp_path))
    paths.action_to_latent_checkpoint(tmp_path).unlink()
    with pytest.raises(UserError, match="05"):
        NeuralBreakout.load(tmp_path)
    result = run_play("--headless", "--steps", "2", "--checkpoint-dir", str(tmp_path / "none"))
    assert result.returncode == 2 and "03" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- controls
def test_key_mapping():
    import pygame

    import common.play as play

    def action(*held):
        return play.action_from_keys(lambda key: key in held)

    assert action() == NOOP
    assert action(pygame.K_SPACE) == FIRE
    assert action(pygame.K_RIGHT) == RIGHT
    assert action(pygame.K_LEFT) == LEFT
    assert action(pygame.K_PERIOD) == NOOP
    assert action(pygame.K_LEFT, pygame.K_RIGHT) == NOOP
    assert action(pygame.K_SPACE, pygame.K_LEFT) == FIRE
    assert action(pygame.K_PERIOD, pygame.K_LEFT) == NOOP
    assert action(pygame.K_a) == NOOP


def test_keys_file_policy(tmp_path):
    import common.play as play
    path = tmp_path / "keys.txt"
    path.write_text("FIRE right*3\n3 noop*2\n")
    assert play.parse_keys_file(str(path)) == [1, 2, 2, 2, 3, 0, 0]
    policy = play.make_policy(f"keys:{path}", seed=0)
    assert [policy(i, None) for i in range(9)] == [1, 2, 2, 2, 3, 0, 0, 0, 0]
    path.write_text("JUMP")
    with pytest.raises(UserError, match="JUMP"):
        play.parse_keys_file(str(path))


# ---------------------------------------------------------------- the script's modes
def test_headless_writes_a_gif_with_the_requested_frames(tmp_path, smoke_data, smoke_action_to_latent):
    from PIL import Image

    keys = tmp_path / "keys.txt"
    keys.write_text("FIRE LEFT*3 RIGHT*3")
    gif = tmp_path / "game.gif"
    result = run_play("--headless", "--steps", "7", "--policy", f"keys:{keys}", "--output", str(gif),
                      "--data-dir", str(smoke_data), "--checkpoint-dir", str(smoke_action_to_latent))
    assert result.returncode == 0, result.stderr
    with Image.open(gif) as image:
        assert image.n_frames == 7
        assert image.size == (160, 224)
    assert gif.with_suffix(".mp4").stat().st_size > 0


def test_window_and_compare_run_under_the_dummy_driver(smoke_data, smoke_action_to_latent):
    common = ["--max-steps", "3", "--fps", "100", "--data-dir", str(smoke_data),
              "--checkpoint-dir", str(smoke_action_to_latent)]
    result = run_play(*common)
    assert result.returncode == 0, result.stderr
    assert "played 3 steps" in result.stdout
    result = run_play(*common, "--compare", "--random-start")
    assert result.returncode == 0, result.stderr
    assert "played 3 steps" in result.stdout


def test_evaluate_writes_control_metrics(tmp_path, smoke_data, smoke_action_to_latent):
    root = tmp_path / "checkpoints"
    shutil.copytree(paths.latent_dir(Path(smoke_action_to_latent)), paths.latent_dir(root))
    result = run_play("--evaluate", "--preset", "smoke", "--speed-steps", "5", "--control-steps", "10",
                      "--drift-steps", "20", "--data-dir", str(smoke_data), "--checkpoint-dir", str(root))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(paths.control_metrics_path(root).read_text())
    for key in ("paddle_within_3px", "ball_within_4px", "copy_last_frame_paddle_within_3px",
                "inferred_latents_paddle_within_3px"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["play_fps"] > 0 and metrics["play_latency_ms_p95"] >= metrics["play_latency_ms_p50"] > 0
    assert len(metrics["details"]["action_to_latent"]["psnr_db_by_step"]) == 20
    assert len(metrics["details"]["action_to_latent"]["paddle_within_3px_by_step"]) == 10
    assert metrics["details"]["windows"] >= 1
    game = metrics["game"]   # the game measures beside the emulator, from emulator-made starts
    assert game["starts"] == {"game_start": 2, "after_lost_life": 2, "ball_in_play": 2}
    assert game["serve"]["game_start"]["served_within_10_steps"]["emulator"] == 1.0
    assert game["serve"]["noop_only"]["emulator"] == 0.0
    for key in ("serve_within_10_steps_game_start", "serve_within_10_steps_after_lost_life", "ball_kept",
                "long_play_one_ball_share", "long_play_one_ball_share_emulator"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["long_play_bricks_back"] >= 0 and game["long_play"]["games"] == 1


# ---------------------------------------------------------------- the control measures
class MarkerGame:
    """A perfect 'model' of a synthetic game where pixel [0, 0, 0] counts steps, [0, 0, 1] holds the action,
    [0, 0, 2] the action before it and [0, 1, 0] the paddle knob in percent (so the previous actions and
    the knob it is given must be the recorded ones)."""

    context_frames = 2
    previous_count = 3
    knob_frame_skip = 4

    def step_batch(self, past, actions, temperature=0.0, previous=None, knob=None, event_temperature=1.0):
        nxt = past[:, -1].clone()
        nxt[:, 0, 0, 0] += 1
        nxt[:, 0, 0, 1] = actions.to(torch.uint8)
        nxt[:, 0, 0, 2] = previous[:, -1].to(torch.uint8)
        nxt[:, 0, 1, 0] = (knob * 100).round().to(torch.uint8)
        return nxt


def synthetic_episode(num_frames: int, seed: int):
    actions = np.random.default_rng(seed).integers(0, 4, num_frames - 1)
    frames = np.zeros((num_frames, 210, 160, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(num_frames)
    frames[1:, 0, 0, 1] = actions
    frames[2:, 0, 0, 2] = actions[:-1]
    frames[1:, 0, 1, 0] = np.round(knob_positions(actions, 4)[:-1] * 100)
    return SimpleNamespace(num_frames=num_frames, actions=actions.tolist(), frames=frames)


def test_control_rollouts_align_actions_and_frames(monkeypatch):
    import common.control_eval as ce

    monkeypatch.setattr(ce, "read_frames", lambda ep, start, stop: ep.frames[start:stop].copy())
    monkeypatch.setattr(ce, "paddle_x", lambda f: float(f[0, 0, 0]) * 10)  # one step off = 10 px off
    monkeypatch.setattr(ce, "ball_xy", lambda f: (float(f[0, 0, 1]) * 10, float(f[0, 1, 0]) * 10))  # wrong action/knob = miss
    episodes = [synthetic_episode(40, 0), synthetic_episode(20, 1)]
    metrics = ce.evaluate_control(MarkerGame(), episodes, control_steps=5, drift_steps=8, max_windows=100,
                                  batch_size=3, with_inferred_latents=False)
    # windows start at t0 = k-1 = 1, every 8 steps, while t0 + 8 <= num_frames - 1: 1..25 and 1, 9
    assert metrics["windows"] == 6 and metrics["episodes"] == 2
    ours, still = metrics["action_to_latent"], metrics["copy_last_frame"]
    assert ours["paddle_within_3px"] == 1.0 and ours["ball_within_4px"] == 1.0
    assert ours["psnr_db_by_step"] == [PSNR_CAP_DB] * 8
    assert still["paddle_within_3px"] == 0.0
    assert metrics["real_paddle_moved_share"] == 1.0 and ours["paddle_within_3px_when_real_paddle_moved"] == 1.0
    assert len(ours["paddle_within_3px_by_step"]) == 5


def test_absent_in_both_is_a_match_and_in_one_a_miss(monkeypatch):
    import common.control_eval as ce

    found = {0: None, 1: (10.0, 20.0), 2: (12.0, 23.0), 3: (13.0, 24.0), 4: (14.0, 20.0)}
    monkeypatch.setattr(ce, "ball_xy", lambda f: found[int(f[0, 0, 0])])
    monkeypatch.setattr(ce, "paddle_x", lambda f: None if found[int(f[0, 0, 0])] is None else found[int(f[0, 0, 0])][0])
    frame = {i: np.full((210, 160, 3), i, np.uint8) for i in found}
    assert ce.ball_match(frame[0], frame[0]) and ce.paddle_match(frame[0], frame[0])
    assert not ce.ball_match(frame[0], frame[1]) and not ce.ball_match(frame[1], frame[0])
    assert not ce.paddle_match(frame[1], frame[0]) and not ce.paddle_match(frame[0], frame[1])
    assert ce.ball_match(frame[1], frame[2])  # 3.6 px apart
    assert not ce.ball_match(frame[1], frame[3])  # 5 px apart
    assert ce.paddle_match(frame[1], frame[3])  # 3 px
    assert not ce.paddle_match(frame[1], frame[4])  # 4 px


def test_the_shipped_weights_play_from_an_emulator_start(tmp_path, capsys):
    """A fresh clone plays at once: with no trained game in checkpoints/ the shipped weights are chosen
    (and said so), and without recorded data the emulator makes the start frames."""
    from common.play import pick_start
    from common.pretrained import PRETRAINED_ROOT, playable_root

    assert playable_root(tmp_path / "checkpoints", explicit=False) == PRETRAINED_ROOT
    assert "shipped weights" in capsys.readouterr().out
    assert playable_root(tmp_path / "mine", explicit=True) == tmp_path / "mine"   # an asked-for root stays
    game = NeuralBreakout.load(PRETRAINED_ROOT, seed=0)
    start, t0, frames = pick_start([], game.context_frames, np.random.default_rng(0), random_start=False)
    assert frames.shape == (game.context_frames, 210, 160, 3) and t0 == game.context_frames - 1
    game.reset(frames, start.actions[:t0])
    for action in (FIRE, RIGHT, RIGHT, LEFT, NOOP):
        frame = game.step(action)
        assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8
