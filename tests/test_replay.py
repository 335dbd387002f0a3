"""Replay: frames stored once, stacks rebuilt across life losses but not across games, n-step
targets, sum-tree proportions and importance weights."""
import numpy as np
import pytest

from common.replay import FrameReplay, SumTree


def obs_with_newest(values, stack=3):
    """Fake (N, stack, 2, 2) observations whose newest frame is filled with `values`."""
    obs = np.zeros((len(values), stack, 2, 2), dtype=np.uint8)
    obs[:, -1] = np.asarray(values, dtype=np.uint8)[:, None, None]
    return obs


def fill(replay, steps, done_at=(), game_starts_at=(), reward=lambda t: float(t)):
    """One env; frame t has value t+1 (0 is reserved for 'before the game')."""
    replay.start(obs_with_newest([1], replay.stack))
    for t in range(steps):
        replay.add(np.array([t % 4]), np.array([reward(t)], np.float32), np.array([t in done_at]),
                   obs_with_newest([t + 2], replay.stack), np.array([t + 1 in game_starts_at]))


def test_frames_are_stored_once_as_uint8():
    replay = FrameReplay(capacity=1000, num_envs=4, stack=8)
    assert replay.frames.dtype == np.uint8
    assert replay.frames.nbytes == 1000 * 84 * 84  # not 8 copies per transition


def test_stacks_zero_before_game_start_and_run_on_across_life_loss():
    replay = FrameReplay(capacity=100, num_envs=1, stack=3, frame_shape=(2, 2))
    # life lost after step 2 (done, same game); a new game starts with frame 5 (time 5)
    fill(replay, 8, done_at={2, 4}, game_starts_at={5})
    newest = lambda t: replay.stacked(np.array([t]), np.array([0]))[0, :, 0, 0].tolist()
    assert newest(0) == [0, 0, 1]  # start of the first game
    assert newest(1) == [0, 1, 2]
    assert newest(4) == [3, 4, 5]  # frames 3, 4 are from the previous life: the stack runs on
    assert newest(5) == [0, 0, 6]  # a new game: older frames are zero, like the env's reset stack
    assert newest(6) == [0, 6, 7]


def test_nstep_returns_stop_at_episode_end():
    replay = FrameReplay(capacity=100, num_envs=1, stack=2, n_step=3, gamma=0.5, frame_shape=(2, 2))
    fill(replay, 10, done_at={4}, reward=lambda t: float(t + 1))
    returns, bootstrap = replay.nstep(np.array([0, 2, 3, 4, 5]), np.zeros(5, int))
    # t=0: 1 + .5*2 + .25*3 ; bootstrap gamma^3
    assert returns[0] == pytest.approx(1 + 0.5 * 2 + 0.25 * 3)
    assert bootstrap[0] == pytest.approx(0.125)
    # t=2: rewards 3, 4, 5 with the episode ending after reward 5 (t=4): no bootstrap
    assert returns[1] == pytest.approx(3 + 0.5 * 4 + 0.25 * 5)
    assert bootstrap[1] == 0.0
    assert returns[2] == pytest.approx(4 + 0.5 * 5) and bootstrap[2] == 0.0  # reward after the end is cut
    assert returns[3] == pytest.approx(5) and bootstrap[3] == 0.0
    assert returns[4] == pytest.approx(6 + 0.5 * 7 + 0.25 * 8) and bootstrap[4] == pytest.approx(0.125)


def test_sample_matches_stored_transitions_after_wraparound():
    replay = FrameReplay(capacity=20, num_envs=2, stack=3, n_step=2, gamma=0.9, frame_shape=(2, 2))
    replay.start(obs_with_newest([1, 101], 3))
    for t in range(40):  # wraps the 10 slots per env several times
        replay.add(np.array([1, 2]), np.array([1.0, 1.0], np.float32), np.array([False, False]),
                   obs_with_newest([(t + 2) % 100, (t + 102) % 250], 3), np.array([False, False]))
    batch = replay.sample(256, np.random.default_rng(0))
    newest, oldest = batch["obs"][:, -1, 0, 0].astype(int), batch["obs"][:, 0, 0, 0].astype(int)
    assert (newest - oldest == 2).all()  # every stack is 3 consecutive frames, none overwritten
    assert (batch["next_obs"][:, -1, 0, 0].astype(int) - newest == 2).all()  # s_{t+n}
    assert np.allclose(batch["returns"], 1.9) and np.allclose(batch["bootstrap"], 0.81)
    lo, hi = replay._valid_range()  # newest frame t=40: stacks from 33 on are intact, t+2 <= 40
    assert (lo, hi) == (33, 38) and len(replay) == 6 * 2
    assert set(np.unique(newest % 100)) <= set(range(34, 40))


def test_sum_tree_sampling_follows_priorities():
    tree = SumTree(5)
    tree.update(np.array([0, 1, 2, 3, 4]), np.array([1.0, 2.0, 3.0, 4.0, 0.0]))
    tree.update(np.array([1, 1]), np.array([2.0, 2.0]))  # duplicate indices are fine
    assert tree.total == pytest.approx(10.0)
    rng = np.random.default_rng(0)
    leaves = tree.find(rng.random(100_000) * tree.total)
    freq = np.bincount(leaves, minlength=5) / len(leaves)
    assert np.allclose(freq, [0.1, 0.2, 0.3, 0.4, 0.0], atol=0.01)


def test_prioritized_sampling_and_importance_weights():
    replay = FrameReplay(capacity=50, num_envs=1, stack=2, n_step=1, prioritized=True, alpha=1.0,
                         priority_eps=0.0, frame_shape=(2, 2))
    fill(replay, 20)
    lo, hi = replay._valid_range()
    valid = np.arange(lo, hi + 1)
    replay.update_priorities(valid, np.where(valid == 5, 9.0, 1.0))  # one transition 9x as likely
    batch = replay.sample(2000, np.random.default_rng(1), beta=1.0)
    share = (batch["indices"] == 5).mean()
    expected = 9.0 / (9.0 + len(valid) - 1)
    assert share == pytest.approx(expected, abs=0.03)
    # IS weights (N p)^-beta / max: the frequent transition is down-weighted by 1/9
    w5 = batch["weights"][batch["indices"] == 5]
    w_other = batch["weights"][batch["indices"] != 5]
    assert np.allclose(w5, 1 / 9) and np.allclose(w_other, 1.0)
    # transitions not yet followed by n frames are never drawn
    assert batch["indices"].max() <= hi
