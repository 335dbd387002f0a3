"""02_record_videos.py on a smoke recording: the data contract, replayability, interruption safety."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import imageio.v2 as imageio
import numpy as np

from common import dataset as ds, paths
from common.recorder import choose_split, episode_seed, make_env
from tests.conftest import REPO, run_script


def test_smoke_recording_meets_the_contract(smoke_data):
    episodes = ds.load_episodes(smoke_data)
    assert len(episodes) == 4 and {e.split for e in episodes} == set(ds.SPLITS)
    doc = json.loads(paths.actions_path(smoke_data, 0).read_text())
    assert doc["game"] == "breakout" and doc["frame_skip"] == 4
    assert doc["action_meanings"] == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    for episode in episodes:
        pngs = sorted(episode.folder.glob("*.png"))
        assert len(pngs) == episode.num_frames == 61  # smoke caps games at 60 steps
        assert len(episode.actions) == len(episode.rewards) == episode.num_frames - 1
        assert len(episode.lives) == episode.num_frames
        assert episode.policy == "random"
        frames = ds.read_frames(episode, 0, 5)
        assert frames.shape == (5, 210, 160, 3) and frames.dtype == np.uint8
        assert tuple(frames[0, 60, 80]) == (200, 72, 72)  # RGB order: the top brick row is red
        video = imageio.get_reader(paths.video_path(smoke_data, 0, episode.index))
        assert video.count_frames() == episode.num_frames
        video.close()
    assert ds.verify_dataset(smoke_data, decode=True) == []
    assert {e.actions[0] for e in episodes} != {1}   # the random player is not made to FIRE at a game's start
    summary = json.loads(paths.summary_path(smoke_data).read_text())["levels"]["0"]
    assert summary["episodes"] == 4 and summary["frames"] == 4 * 61
    assert summary["action_changed_share"] > 0.6  # actions drawn afresh every step (3/4 expected)
    assert set(summary["action_histogram"]) == {"NOOP", "FIRE", "RIGHT", "LEFT"}


def test_recorded_actions_replay_to_the_recorded_frames(smoke_data):
    """Action i turns frame i into frame i+1: replaying the actions from the seed reproduces every PNG."""
    episode = ds.load_episodes(smoke_data, splits=("val",))[0]
    env = make_env("breakout", frame_skip=4, noop_max=30)
    env.unwrapped.np_random = np.random.default_rng(episode.seed)
    env.reset()
    frames = ds.read_frames(episode)
    assert np.array_equal(env.unwrapped.ale.getScreenRGB(), frames[0])
    for i, action in enumerate(episode.actions):
        _, reward, _, _, info = env.step(action)
        assert np.array_equal(env.unwrapped.ale.getScreenRGB(), frames[i + 1]), f"frame {i + 1} differs"
        assert reward == episode.rewards[i] and info["lives"] == episode.lives[i + 1]


def test_interrupted_recording_keeps_only_complete_episodes_and_tops_up(tmp_path):
    data_dir = tmp_path / "data"
    args = ["02_record_videos.py", "--policy", "random", "--preset", "smoke", "--random-episodes", "200",
            "--max-steps", "40", "--no-video", "--data-dir", str(data_dir)]
    # SIG_DFL: a test runner started in the background (`cmd &`) ignores SIGINT, and its children inherit that
    process = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    json_path = paths.actions_path(data_dir, 0)
    deadline = time.time() + 60
    while time.time() < deadline and not (json_path.exists() and len(ds.load_episodes(data_dir)) >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    kept = ds.load_episodes(data_dir)
    assert 2 <= len(kept) < 200
    assert ds.verify_dataset(data_dir, decode=True) == []
    level_dir = paths.level_frames_dir(data_dir, 0)
    assert sorted(p.name for p in level_dir.iterdir()) == sorted(e.folder.name for e in kept)  # no temp folders

    # what a killed run leaves behind (a temp folder, an episode not yet listed) is not data, and is removed
    shutil.copytree(kept[0].folder, level_dir / ".tmp_episode_900")
    shutil.copytree(kept[0].folder, level_dir / "episode_901")
    assert any("episode_901" in p and "not listed" in p for p in ds.verify_dataset(data_dir, decode=False))
    result = run_script("02_record_videos.py", "--policy", "random", "--preset", "smoke", "--random-episodes",
                        str(len(kept) + 1), "--max-steps", "40", "--no-video", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    episodes = ds.load_episodes(data_dir)
    assert len(episodes) == len(kept) + 1 and ds.verify_dataset(data_dir) == []
    assert [e.actions for e in episodes[:len(kept)]] == [e.actions for e in kept]  # old episodes untouched


def test_replace_swaps_the_level_and_reports_missing_checkpoints(tmp_path):
    data_dir = tmp_path / "data"
    base = ["02_record_videos.py", "--policy", "random", "--preset", "smoke", "--random-episodes", "2",
            "--max-steps", "10", "--no-video", "--workers", "1", "--data-dir", str(data_dir)]
    assert run_script(*base).returncode == 0
    first = ds.load_episodes(data_dir)
    refused = run_script(*base, "--add", "--frame-skip", "2")
    assert refused.returncode == 2 and "--replace" in refused.stderr  # never mix frame skips in one level
    result = run_script(*base, "--replace", "--seed", "1", "--frame-skip", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(paths.actions_path(data_dir, 0).read_text())["frame_skip"] == 2
    second = ds.load_episodes(data_dir)
    assert len(second) == 2 and {e.seed for e in second}.isdisjoint({e.seed for e in first})
    # seeds and splits as in a new recording with that seed, so a replaced level keeps its test episodes
    assert [(e.seed, e.split) for e in second] == [(episode_seed(1, 0, i), choose_split(1, 0, i)) for i in range(2)]
    assert not any(e.folder.exists() for e in first) and ds.verify_dataset(data_dir) == []
    result = run_script("02_record_videos.py", "--policy", "dqn", "--preset", "smoke",
                        "--checkpoint-dir", str(tmp_path / "none"), "--data-dir", str(data_dir))
    assert result.returncode == 2 and "01_train_dqn.py" in result.stderr and "Traceback" not in result.stderr


def test_dqn_levels_record_with_the_checkpoint_and_epsilon(tmp_path):
    """An (untrained) skill_level_1.pt is played through Stage 01's load_policy; the level notes its checkpoint."""
    import torch

    from common.atari import make_env_config
    from common.dqn import build_q_network
    from common.io import save_checkpoint

    model_config = {"num_actions": 4, "stack": 8, "conv_widths": [8, 8, 8], "fc_width": 16, "dueling": False}
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck" / "dqn" / "skill_level_1.pt", kind="dqn", model_config=model_config,
                    env_config=make_env_config("breakout"), state_dict=build_q_network(model_config).state_dict(),
                    step=123, eval_score=4.0, skill_level=1, threshold=10.0, threshold_reached=False)
    data_dir = tmp_path / "data"
    result = run_script("02_record_videos.py", "--preset", "smoke", "--levels", "1", "--episodes", "2",
                        "--max-steps", "30", "--epsilon", "0.5", "--workers", "1", "--no-video",
                        "--checkpoint-dir", str(tmp_path / "ck"), "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(paths.actions_path(data_dir, 1).read_text())
    assert doc["policy"] == "dqn" and doc["checkpoint"]["step"] == 123 and doc["checkpoint"]["eval_score"] == 4.0
    assert doc["checkpoint"]["threshold"] == 10.0 and doc["checkpoint"]["threshold_reached"] is False
    level = json.loads(paths.summary_path(data_dir).read_text())["levels"]["1"]
    assert (level["threshold"], level["threshold_reached"], level["checkpoint_eval_score"]) == (10.0, False, 4.0)
    assert 0 < level["frames_per_life"] <= level["frames"]
    episodes = ds.load_episodes(data_dir)
    assert [e.level for e in episodes] == [1, 1] and all(e.num_frames == 31 for e in episodes)
    random_steps = sum(e.extra["random_steps"] for e in episodes)
    assert 15 <= random_steps <= 45  # epsilon 0.5 of 58 policy steps, drawn afresh each step
    assert ds.verify_dataset(data_dir) == []



def test_a_rally_is_counted_by_the_drops_of_the_lives_counter():
    from common.level_store import lives_lost

    assert lives_lost([5, 5, 4, 4, 3, 3]) == 2 and lives_lost([5]) == 0 and lives_lost([3, 3, 3]) == 0
