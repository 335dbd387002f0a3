"""The game-level measures against two fake world models: the real emulator behind the neural game's
interface (a perfect model: its figures must equal the emulator's) and one that never draws a ball."""
from __future__ import annotations

import hashlib
from dataclasses import replace
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from common.action_to_latent import knob_positions
from common.detectors import BALL_MAX_H, BALL_MAX_W, PLAY_LEFT, PLAY_TOP, RED, ball_count, ram_positions, ram_score
from common.game_eval import (Emulator, evaluate_game, follow_ball, game_stats, make_starts, random_events,
                              serve_x_counts, total_variation)

K = 3


def frames_key(frames: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(frames).tobytes()).hexdigest()


def no_events(past, nxt):
    return torch.zeros(len(past), dtype=torch.int64)


class EmulatorGame:
    """A perfect world model: the emulator itself, found by the frames it is given.

    step_batch() plays a past that is a start's frames from that start's saved state (game starts all
    look alike, so each carries a mark of its own: marked()), and any other past from the state its row
    of the batch reached on the step before. It checks that the previous actions and the knob it is
    given are those of that past's game.
    """
    context_frames, previous_count, knob_frame_skip = K, 2, 4

    def __init__(self, starts):
        self.emulator = Emulator()
        self.latent_model = SimpleNamespace(event_classes=4, encode_event=no_events)  # events change nothing here
        self.starts = {frames_key(s.frames): (s.state, s.actions) for kind in starts.values() for s in kind}
        assert len(self.starts) == sum(len(kind) for kind in starts.values())
        self.rows = {}  # batch row -> (the past it made, its emulator state, every action since the game began)

    def step_batch(self, past, actions, temperature=0.0, previous=None, knob=None, event_temperature=1.0, events=None):
        out = []
        for row, (frames, action, before, turned) in enumerate(zip(past.numpy(), actions.tolist(), previous.tolist(),
                                                                   knob.tolist())):
            key = frames_key(frames)
            if key in self.starts:
                state, history = self.starts[key]
            else:
                made, state, history = self.rows[row]
                assert made == key
            assert before == ([0, 0] + history)[-2:] and turned == pytest.approx(knob_positions(history, 4)[-1], abs=1e-6)
            self.emulator.ale.restoreState(state)
            self.emulator.env.step(action)
            out.append(self.emulator.ale.getScreenRGB())
            after = frames_key(np.concatenate([frames[1:], out[-1][None]]))
            self.rows[row] = after, self.emulator.ale.cloneState(), history + [action]
        return torch.from_numpy(np.stack(out))


def marked(starts):
    """Copies of the starts whose frames carry their number in a pixel that no detector reads (above the digits)."""
    out, number = {}, 0
    for kind, made in starts.items():
        out[kind] = []
        for start in made:
            number += 1
            frames = start.frames.copy()
            frames[:, 0, 0] = (number, 0, 0)
            out[kind].append(replace(start, frames=frames))
    return out


def erase_ball(frame: np.ndarray) -> np.ndarray:
    """The frame with every ball-sized red blob in the play area painted black."""
    frame = frame.copy()
    play = frame[PLAY_TOP:, PLAY_LEFT:]
    mask = (play == RED).all(axis=-1).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    for label in range(1, count):
        if stats[label][2] <= BALL_MAX_W and stats[label][3] <= BALL_MAX_H:
            play[labels == label] = 0
    return frame


class NoBallGame:
    """A world model that never draws a ball: the last context frame with the ball erased, forever."""
    context_frames, previous_count, knob_frame_skip = K, 0, 0
    latent_model = SimpleNamespace(event_classes=4, encode_event=no_events)

    def step_batch(self, past, actions, temperature=0.0, previous=None, knob=None, event_temperature=1.0, events=None):
        return torch.from_numpy(np.stack([erase_ball(f) for f in past[:, -1].numpy()]))


SMALL = dict(window_steps=30, games=2, game_steps=150, seed=0)


@pytest.fixture(scope="module")
def starts():
    return make_starts(K, count=4, seed=0)


@pytest.fixture(scope="module")
def marked_starts(starts):
    return marked(starts)


@pytest.fixture(scope="module")
def perfect(marked_starts):
    return evaluate_game(EmulatorGame(marked_starts), starts=marked_starts, **SMALL)


def test_starts_are_the_promised_states_and_reproducible(starts):
    emulator = Emulator()
    for kind, made in starts.items():
        assert len(made) == 4
        for start in made:
            assert start.frames.shape == (K, 210, 160, 3) and start.frames.dtype == np.uint8
            assert (ball_count(start.frames[-1]) == 1) == (kind == "ball_in_play")
            assert (ram_positions(start.rams[-1])[1] is None) == (kind != "ball_in_play")
            emulator.restore(start)
            assert np.array_equal(emulator.ale.getRAM(), start.rams[-1])
    assert all(s.actions[0] == 1 for s in starts["after_lost_life"])
    assert all(set(s.actions) == {0} for s in starts["game_start"])
    again = make_starts(K, count=2, seed=0)
    assert all(np.array_equal(a.frames, b.frames) and a.actions == b.actions
               for kind in again for a, b in zip(again[kind], starts[kind]))


def test_random_events():
    balls = [None, (50, 100), (52, 104), (54, 108), (52, 112), (50, 116), (50, 112), None, None, (60, 120)]
    #        -     serve      -           -           x flips     -           y flips     -     -     serve
    assert random_events(balls).tolist() == [False, True, False, False, True, False, True, False, False, True]
    assert random_events([(50, 100), (52, 104), (52, 108), (50, 112)]).tolist() == [False, False, True, False]


def test_serve_histogram_and_distance():
    assert serve_x_counts([8, 25.9, 26, 151.5]).tolist() == [2, 1, 0, 0, 0, 0, 0, 1]
    p = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    assert total_variation(p, p) == 0.0 and total_variation(p, np.array([0, 0, 2, 0, 0, 0, 0, 0])) == 1.0
    assert total_variation(p, np.zeros(8)) is None


def test_game_stats_count_bricks_back_and_unexplained_digits(starts):
    start = starts["game_start"][0].frames[-1]
    broken = start.copy()
    broken[57:63, 8:16] = 0                    # the top left brick gone ...
    blank_lives = start.copy()
    blank_lives[5:15, 100:112] = 0             # ... and the lives digit wiped, with nothing happening
    stats = game_stats([broken, start, blank_lives])
    assert stats["bricks_broken"] == 0 and stats["bricks_back"] == 1
    assert stats["digit_changes_without_cause"] == 1 and stats["lives_lost"] is None and stats["score_gained"] == 0


def test_game_stats_of_an_emulator_game_played_to_its_end():
    emulator, rng = Emulator(), np.random.default_rng(3)
    emulator.new_game(rng)
    while not emulator.over:
        emulator.step(follow_ball(emulator.frames[-1], rng, random_share=0.5))
    stats = game_stats(emulator.frames)
    assert stats["serves"] == 5 and stats["lives_lost"] == 4  # the game ends before the last loss is drawn
    assert stats["bricks_back"] == 0 and stats["digit_changes_without_cause"] == 0
    assert stats["returns_without_paddle"] == stats["steps_without_paddle"] == 0
    assert stats["score_gained"] == ram_score(emulator.rams[-1]) > 0


def test_a_ball_sent_back_up_from_bare_floor_is_counted():
    from common.game_eval import returns_without_paddle

    falling, low, rising = (60.0, 170.0), (60.0, 180.0), (64.0, 172.0)
    assert returns_without_paddle([falling, low, rising], [None, 62.0, None]) == 0    # the paddle under it
    assert returns_without_paddle([falling, low, rising], [None, 100.0, None]) == 1   # 40 px away
    assert returns_without_paddle([falling, low, (60.0, 190.0)], [None, 100.0, None]) == 0   # missed, as it should
    assert returns_without_paddle([falling, None, rising], [None, 100.0, None]) == 0  # not seen at the paddle
    assert returns_without_paddle([falling, (60.0, 200.0), rising], [None, 100.0, None]) == 1  # off the floor


def test_a_perfect_model_scores_like_the_emulator(perfect):
    for kind in ("game_start", "after_lost_life", "all"):
        serve = perfect["serve"][kind]
        assert serve["served_within_10_steps"] == {"neural": 1.0, "emulator": 1.0}
        assert serve["serve_x_tv"] == 0.0
        assert serve["serve_x_counts"]["neural"] == serve["serve_x_counts"]["emulator"]
    assert perfect["serve"]["all"]["starts"] == 8
    assert perfect["serve"]["noop_only"] == {"neural": 0.0, "emulator": 0.0}   # no FIRE, no serve
    assert len(set(perfect["serve"]["all"]["serve_x_counts"]["emulator"])) > 1  # the serves are spread out

    in_play = perfect["ball_in_play"]
    assert in_play["emulator"]["ball_kept"] > 0.5 and in_play["emulator"]["steps_before_first_event"] > 0
    for mode in ("open_loop", "teacher_forced"):
        assert in_play[mode]["ball_kept"] == in_play["emulator"]["ball_kept"]
        assert in_play[mode]["ball_kept_when_emulator_ball"] == 1.0
        assert in_play[mode]["ball_within_4px"] == in_play[mode]["ball_within_4px_before_first_event"] == 1.0

    for game in perfect["long_play"]["per_game"]:
        assert game["neural"] == game["emulator"]
        emulator = game["emulator"]
        assert emulator["steps"] == 150 and emulator["bricks_back"] == 0 and emulator["returns_without_paddle"] == 0
        assert emulator["digit_changes_without_cause"] == 0
        assert emulator["serves"] in (emulator["lives_lost"], emulator["lives_lost"] + 1)
    # random keys: the emulator's game played the same way, until it is over (the neural game has no end),
    # up to the frame-keyed states, which random keys in front of a waiting game can confuse for a step
    for game in perfect["random_keys"]["per_game"]:
        neural, emulator = game["neural"], game["emulator"]
        assert emulator["returns_without_paddle"] == neural["returns_without_paddle"] == 0
        assert emulator["serves"] >= 1 and neural["serves"] >= emulator["serves"] - 1
        if emulator["steps"] == neural["steps"]:
            assert neural["one_ball_share"] == pytest.approx(emulator["one_ball_share"], abs=0.02)
    total = perfect["long_play"]["total"]["emulator"]
    assert total["bricks_broken"] > 0 and total["score_gained"] > 0 and total["serves"] >= 2


def test_a_model_without_a_ball_never_serves_or_keeps_it(marked_starts, perfect):
    result = evaluate_game(NoBallGame(), starts=marked_starts, **SMALL)
    for kind in ("game_start", "after_lost_life"):
        assert result["serve"][kind]["served_within_10_steps"] == {"neural": 0.0, "emulator": 1.0}
        assert result["serve"][kind]["serve_x_tv"] is None
    assert result["serve"]["noop_only"] == {"neural": 0.0, "emulator": 0.0}
    for mode in ("open_loop", "teacher_forced"):
        assert result["ball_in_play"][mode]["ball_kept"] == 0.0
    assert result["ball_in_play"]["emulator"] == perfect["ball_in_play"]["emulator"]  # the emulator's side repeats
    assert result["random_keys"]["total"]["neural"]["serves"] == 0
    neural = result["long_play"]["total"]["neural"]
    assert neural["one_ball_share"] == 0.0 and neural["serves"] == 0 and neural["bricks_back"] == 0
