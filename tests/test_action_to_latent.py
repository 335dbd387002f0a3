"""Stages 4-5: the (action, latent) pairs and the action->latent map."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common import paths
from common.action_to_latent import (KNOB_TURN_PER_FRAME, VIEW_SIZE, ActionToLatent, cross_entropy, event_nll,
                                     frame_view, knob_positions, load_action_to_latent, past_frame_indices,
                                     previous_action_rows)
from common.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def run_script(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def tiny_config(variant: str, **overrides) -> dict:
    config = {"num_actions": 4, "num_codes": 8, "code_positions": 2, "context_frames": 3, "variant": variant,
              "frames_used": 2, "hidden": 32}
    return {**config, **overrides}


def test_past_frames_repeat_frame_zero_at_the_start():
    assert past_frame_indices(0, 3) == [0, 0, 0]
    assert past_frame_indices(1, 3) == [0, 0, 1]
    assert past_frame_indices(5, 3) == [3, 4, 5]


def test_frame_view_keeps_the_paddle_to_the_pixel_and_a_two_pixel_ball():
    frames = np.zeros((1, 210, 160, 3), dtype=np.uint8)
    frames[0, 101, 77:79] = (200, 72, 72)  # the red ball, 2 px wide on an odd row
    frames[0, 189:195, 41:57] = (200, 72, 72)  # the paddle
    view = frame_view(torch.from_numpy(frames))[0]
    assert view.shape == (VIEW_SIZE,) and view.dtype == torch.uint8
    band, coarse = view[:160], view[160:].view(26, 20)
    assert torch.equal(torch.nonzero(band).flatten(), torch.arange(41, 57))
    assert coarse[101 // 8, 77 // 8] == 200 and coarse[189 // 8, 41 // 8] == 200
    assert int((coarse > 0).sum()) == 1 + 2 * 3  # the ball's block; the paddle spans 2 x 3 blocks


@pytest.fixture
def one_thread():
    """Tiny models train ~5x faster on one thread of this busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_frames_variant_learns_a_state_dependent_mapping(one_thread):
    """The latent a key produces depends on the frame (e.g. LEFT at the wall): the frames variant learns it."""
    torch.manual_seed(0)
    n = 128
    past = torch.zeros(n, 1, 210, 160, 3, dtype=torch.uint8)
    x = torch.randint(8, 136, (n,))
    for i in range(n):
        past[i, -1, 189:195, x[i]:x[i] + 16, 0] = 200  # the paddle in the newest frame
    actions = torch.randint(0, 4, (n,))
    at_left = (x < 72).long()
    codes = torch.stack([actions + 4 * at_left, actions], 1)  # position 0 depends on the paddle's side
    model = ActionToLatent(tiny_config("frames", context_frames=1, frames_used=1))
    views = model.views_from_past(past)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = cross_entropy(model.features_from_views(actions, views), codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert torch.equal(model.sample(actions, past), codes)
    with pytest.raises(ValueError):
        model.logits(actions[:2])  # the frames variant refuses to guess without frames
    assert ActionToLatent(tiny_config("action")).logits(actions[:2]).shape == (2, 2, 8)


def fit_event_head(model: ActionToLatent, actions: torch.Tensor, views: torch.Tensor, prior: torch.Tensor,
                   events: torch.Tensor, steps: int, since_ball: torch.Tensor | None = None,
                   served: torch.Tensor | None = None, serve_events: tuple[int, ...] = ()) -> None:
    """Adam on event_nll of prior + the head's correction, as Stage 5 trains it."""
    since_ball = torch.zeros(len(actions), dtype=torch.int64) if since_ball is None else since_ball
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        logits = prior + model.event_correction_from_views(actions, views, prior, since_ball)
        loss = event_nll(logits, events, served, serve_events).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_the_event_head_learns_that_fire_serves_only_without_a_ball(one_thread):
    """The world model's prior cannot tell FIRE from NOOP (same action code); the map's event head sees
    the key and the frame: it starts as no correction and learns 'FIRE without a ball -> serve class'."""
    torch.manual_seed(0)
    n, serve, nothing = 256, 5, 0
    past = torch.zeros(n, 1, 210, 160, 3, dtype=torch.uint8)
    ball = torch.rand(n) < 0.5
    past[ball, -1, 120:122, 80:82, 0] = 200                     # a ball in play in half of the frames
    actions = torch.randint(0, 4, (n,))
    events = torch.where(~ball & (actions == 1), serve, nothing)
    prior = torch.log_softmax(torch.zeros(n, 16), -1)          # the prior: no idea
    model = ActionToLatent(tiny_config("frames", context_frames=1, frames_used=1, event_classes=16))
    views = model.views_from_past(past)
    assert torch.equal(model.event_correction(actions, past, prior, torch.zeros(n, dtype=torch.int64)), torch.zeros(n, 16))   # untrained: the prior alone
    fit_event_head(model, actions, views, prior, events, 200)
    assert torch.equal((prior + model.eval().event_correction(actions, past, prior, torch.zeros(n, dtype=torch.int64))).argmax(-1), events)
    assert ActionToLatent(tiny_config("action", event_classes=16)).event_classes == 0   # needs the frames


def test_the_event_head_reads_from_the_prior_where_a_key_can_serve(one_thread):
    """Where the frames the head sees look alike (the ball just left the screen; whether the lives digit
    has dropped, and FIRE serves, shows only in the full frames), the prior knows a little: it gives a serve
    somewhat more chance where one is possible. A correction added to its logits cannot make FIRE a sure
    serve there and a sure non-serve elsewhere; a head that reads the prior can."""
    torch.manual_seed(0)
    n, serve, nothing = 512, 5, 0
    past = torch.zeros(n, 1, 210, 160, 3, dtype=torch.uint8)   # every view the same
    servable = torch.rand(n) < 0.5
    actions = torch.randint(0, 4, (n,))
    events = torch.where(servable & (actions == 1), serve, nothing)
    prior = torch.full((n, 16), -9.0)
    prior[:, nothing] = 0.0
    prior[:, serve] = torch.where(servable, -1.1, -2.2)
    model = ActionToLatent(tiny_config("frames", context_frames=1, frames_used=1, event_classes=16))
    views = model.views_from_past(past)
    fit_event_head(model, actions, views, prior, events, 300)
    probs = torch.softmax(prior + model.eval().event_correction(actions, past, prior, torch.zeros(n, dtype=torch.int64)), -1)
    assert probs[torch.arange(n), events].min() > 0.9


def test_the_event_head_reads_the_steps_since_the_ball_left():
    """FIRE serves only once the lives digit has dropped, some steps after the ball left: from frames and a
    prior that look alike the head learns it from the count of steps since a ball was in play."""
    torch.manual_seed(0)
    n, serve, nothing = 512, 5, 0
    past = torch.zeros(n, 1, 210, 160, 3, dtype=torch.uint8)   # no ball, every view the same
    since_ball = torch.randint(1, 16, (n,))
    actions = torch.randint(0, 4, (n,))
    events = torch.where((since_ball >= 6) & (actions == 1), serve, nothing)
    prior = torch.log_softmax(torch.zeros(n, 16), -1)
    model = ActionToLatent(tiny_config("frames", context_frames=1, frames_used=1, event_classes=16))
    fit_event_head(model, actions, model.views_from_past(past), prior, events, 300, since_ball)
    probs = torch.softmax(prior + model.eval().event_correction(actions, past, prior, since_ball), -1)
    assert probs[torch.arange(n), events].min() > 0.9


def test_without_a_ball_the_head_learns_what_happened_not_the_inferred_class(one_thread):
    """The class the latent model infers for a step without a ball serves only most of the time: here it is
    the serve class on every such step, but a ball came only after FIRE. Trained on the class the head
    serves whatever the key; trained on what happened (a serve or not), it serves on FIRE alone."""
    torch.manual_seed(0)
    n, serve = 512, 5
    past = torch.zeros(n, 1, 210, 160, 3, dtype=torch.uint8)   # no ball, every view the same
    actions = torch.randint(0, 4, (n,))
    events = torch.full((n,), serve)
    served = (actions == 1).long()
    prior = torch.log_softmax(torch.zeros(n, 16), -1)
    serve_probability = {}
    for name, outcome in (("class", None), ("what happened", served)):
        torch.manual_seed(0)
        model = ActionToLatent(tiny_config("frames", context_frames=1, frames_used=1, event_classes=16))
        fit_event_head(model, actions, model.views_from_past(past), prior, events, 200, served=outcome,
                       serve_events=(serve,))
        correction = model.eval().event_correction(actions, past, prior, torch.zeros(n, dtype=torch.int64))
        serve_probability[name] = torch.softmax(prior + correction, -1)[:, serve]
    assert serve_probability["class"][actions != 1].min() > 0.9                 # serves without FIRE
    assert serve_probability["what happened"][actions == 1].min() > 0.9
    assert serve_probability["what happened"][actions != 1].max() < 0.1


def test_a_pair_served_when_its_next_frame_brings_a_ball_to_a_waiting_game():
    from common.action_pairs import served

    since = [15, 15, 0, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 0]
    pairs = [{"level": 0, "episode": 0, "frame": f, "since_ball": s} for f, s in enumerate(since)]
    pairs.append({"level": 1, "episode": 0, "frame": 0, "since_ball": 15})    # another game, and its last pair
    # a ball back after 2 steps was among the bricks, not served; from 5 steps on the game waits for FIRE
    assert served(pairs).tolist() == [0, 1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, -1, -1]


def test_steps_since_ball_count_from_the_last_ball_and_stop_at_the_cap():
    from common.ball_sampler import SINCE_BALL_CAP, steps_since_ball

    shown = np.array([0, 0, 1, 1, 0, 0, 0] + [0] * 20, bool)
    assert steps_since_ball(shown)[:7].tolist() == [SINCE_BALL_CAP, SINCE_BALL_CAP, 0, 0, 1, 2, 3]
    assert steps_since_ball(shown)[-1] == SINCE_BALL_CAP
    assert steps_since_ball(shown[:1], start=4).tolist() == [5]


def test_previous_actions_are_noop_before_the_start_and_can_decide_the_latent(one_thread):
    """A paddle pushed into the wall hides how long it was pushed: the map can read the earlier actions."""
    assert previous_action_rows([2, 3, 1, 1], np.array([0, 1, 3]), 2).tolist() == [[0, 0], [0, 2], [3, 1]]
    torch.manual_seed(0)
    previous = torch.randint(0, 4, (256, 2))
    actions = torch.randint(0, 4, (256,))
    codes = torch.stack([actions + 4 * (previous[:, 0] == 2).long(), previous[:, 1]], 1)  # not from the action alone
    model = ActionToLatent(tiny_config("action", previous_actions=2))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = cross_entropy(model.features_from_views(actions, None, previous), codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.equal(model.eval().sample(actions, previous=previous), codes)
    with pytest.raises(ValueError, match="previous actions"):
        model.sample(actions)


def test_knob_is_the_clamped_sum_of_the_actions():
    turn = 4 * KNOB_TURN_PER_FRAME
    np.testing.assert_allclose(knob_positions([3, 3, 0, 1, 2], 4),
                               [0.5, 0.5 + turn, 0.5 + 2 * turn, 0.5 + 2 * turn, 0.5 + 2 * turn, 0.5 + turn], atol=1e-6)
    assert knob_positions([2] * 20, 4)[-1] == 0.0 and knob_positions([3] * 20, 4)[-1] == 1.0
    assert knob_positions([2] * 20 + [3], 4)[-1] == pytest.approx(turn)  # back from the stop at once
    assert knob_positions([3], 2)[-1] - 0.5 == pytest.approx(turn / 2)  # half the frames, half the turn
    assert knob_positions([], 4).tolist() == [0.5]


def test_knob_decides_whether_left_moves_a_paddle_pushed_into_the_right_wall():
    """In the emulator: the paddle stays at the right wall while the knob is near its stop, and LEFT moves it
    exactly when the knob has turned back far enough; the paddle's picture alone cannot tell these apart."""
    from common.detectors import ram_positions
    from common.recorder import make_env

    env = make_env("breakout", frame_skip=4, noop_max=30)
    env.unwrapped.np_random = np.random.default_rng(0)
    env.reset()
    rng = np.random.default_rng(0)
    actions, paddle = [], [ram_positions(env.unwrapped.ale.getRAM())[0]]
    for _ in range(400):
        actions.append(int(rng.integers(4)))
        _, _, terminated, truncated, _ = env.step(actions[-1])
        paddle.append(ram_positions(env.unwrapped.ale.getRAM())[0])
        if terminated or truncated:
            break
    paddle, knob = np.array(paddle), knob_positions(actions, 4)
    assert np.corrcoef(knob, paddle)[0, 1] < -0.95  # LEFT turns the knob up and the paddle left
    right_wall = paddle.max()
    assert np.all(paddle[knob < 0.2] == right_wall)
    left_at_wall = (paddle[:-1] == right_wall) & (np.array(actions) == 3)
    moved = paddle[1:][left_at_wall] < right_wall
    assert left_at_wall.sum() >= 10 and 0 < moved.sum() < left_at_wall.sum()
    assert np.array_equal(moved, knob[:-1][left_at_wall] >= 0.2)


def test_the_map_reads_the_knob(one_thread):
    """A latent decided by the knob alone (LEFT at the wall: stay or move) is learned exactly."""
    torch.manual_seed(0)
    knob = torch.rand(256)
    actions = torch.full((256,), 3)
    codes = torch.stack([(knob >= 0.2).long(), (knob >= 0.7).long()], 1)
    model = ActionToLatent(tiny_config("action", knob_frame_skip=4))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = cross_entropy(model.features_from_views(actions, None, knob=knob), codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # a knob bin is 1/63 wide: only inputs away from the two thresholds are decided by their bin
    clear = ((knob - 0.2).abs() > 0.02) & ((knob - 0.7).abs() > 0.02)
    assert torch.equal(model.eval().sample(actions, knob=knob)[clear], codes[clear])
    with pytest.raises(ValueError, match="knob"):
        model.sample(actions)


def test_temperature_zero_is_deterministic_and_sampling_is_seeded():
    torch.manual_seed(1)
    model = ActionToLatent(tiny_config("frames")).eval()
    past = torch.randint(0, 256, (5, 3, 210, 160, 3), dtype=torch.uint8)
    actions = torch.tensor([0, 1, 2, 3, 2])
    greedy = model.sample(actions, past, temperature=0.0)
    assert greedy.shape == (5, 2) and greedy.dtype == torch.int64
    assert torch.equal(greedy, model.sample(actions, past, temperature=0.0))
    assert torch.equal(greedy, model.logits(actions, past).argmax(-1))
    hot = [model.sample(actions, past, temperature=50.0, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(hot[0], hot[1])
    many = model.sample(actions.repeat(40), past.repeat(40, 1, 1, 1, 1), temperature=50.0)
    assert len(many.unique()) > 1  # a high temperature does sample, not argmax


def test_missing_inputs_name_the_stage_to_run(tmp_path):
    with pytest.raises(UserError, match="05_train_action_to_latent.py"):
        load_action_to_latent(tmp_path)
    result = run_script("05_train_action_to_latent.py", "--preset", "smoke", "--data-dir", str(tmp_path / "data"),
                        "--checkpoint-dir", str(tmp_path / "ckpt"))
    assert result.returncode == 2 and "04_collect_action_latent_pairs.py" in result.stderr
    assert "Traceback" not in result.stderr


def test_pairs_agree_with_the_data_set(smoke_action_to_latent):
    """One pair per transition, in order, with the data set's actions and splits, and the codes the
    encoder gives on the real RGB frames (past padded with frame 0, as Stage 3 trains)."""
    from common.dataset import load_episodes, read_frames
    from common.latent_action import load_latent_action_model

    data = smoke_action_to_latent.parent / "data"
    doc = json.loads(paths.pairs_path(data).read_text())
    model = load_latent_action_model(smoke_action_to_latent)
    episodes = load_episodes(data)
    assert doc["meta"]["transitions"] == len(doc["pairs"]) == sum(e.num_frames - 1 for e in episodes)
    for episode in episodes:
        rows = [p for p in doc["pairs"] if (p["level"], p["episode"]) == (episode.level, episode.index)]
        assert [p["frame"] for p in rows] == list(range(episode.num_frames - 1))
        assert [p["action"] for p in rows] == episode.actions
        assert {p["split"] for p in rows} == {episode.split}
        assert all(len(p["latent_code"]) == model.code_positions for p in rows)
        assert all(0 <= c < model.num_codes for p in rows for c in p["latent_code"])
    episode = episodes[0]
    frames = torch.from_numpy(read_frames(episode))
    picks = [0, 1, episode.num_frames - 2]
    past = torch.stack([frames[past_frame_indices(i, model.context_frames)] for i in picks])
    codes = model.encode(past, frames[[i + 1 for i in picks]])
    rows = [p for p in doc["pairs"] if (p["level"], p["episode"]) == (episode.level, episode.index)]
    assert codes.tolist() == [rows[i]["latent_code"] for i in picks]
    assert doc["meta"]["event_classes"] == model.event_classes > 0
    events = model.encode_event(past, frames[[i + 1 for i in picks]])
    assert events.tolist() == [rows[i]["event"] for i in picks]
    index = model.to_index(past)
    prior = torch.log_softmax(model.event_prior(index, codes).float(), -1)
    assert torch.allclose(prior, torch.tensor([rows[i]["event_prior"] for i in picks]), atol=0.006)
    stats = json.loads(paths.pair_stats_path(data).read_text())
    assert sum(row["count"] for row in stats["actions"].values()) == len(doc["pairs"])
    # the classes that serve and that send the ball back: counted again here from the RGB frames and the events
    from collections import Counter
    from common.action_pairs import WAITING_STEPS
    from common.ball_sampler import AT_PADDLE, BALL_H, BALL_W, ball_in_play, steps_since_ball
    from common.detectors import RED, ball_count, ball_xy
    red = [tuple(c) for c in model.palette.rgb.tolist()].index(RED)
    counts = np.zeros((4, model.event_classes), int)   # without a ball, served; at the paddle, sent back
    serves = Counter()   # where a ball came after a game waited for a serve: the detector's ball, top-left
    for episode in episodes:
        rgb = read_frames(episode)
        classes = model.to_index(torch.from_numpy(rgb))
        ball, near = ball_in_play(classes, red).numpy(), ball_in_play(classes, red, AT_PADDLE).numpy()
        for i in np.nonzero((steps_since_ball(ball)[:-1] >= WAITING_STEPS) & ball[1:])[0]:
            if ball_count(rgb[i + 1]) == 1:
                x, y = ball_xy(rgb[i + 1])
                serves[(round(y - (BALL_H - 1) / 2), round(x - (BALL_W - 1) / 2))] += 1
        for p in doc["pairs"]:
            if (p["level"], p["episode"]) == (episode.level, episode.index):
                i, event = p["frame"], p["event"]
                counts[:, event] += [not ball[i], not ball[i] and ball[i + 1], near[i], near[i] and ball[i + 1]]
                assert p["since_ball"] == steps_since_ball(ball)[i]
    assert stats["transitions_without_ball"] == counts[0].tolist()
    assert stats["transitions_at_paddle"] == counts[2].tolist()
    for key, cases, happened in (("serve_events", 0, 1), ("keep_events", 2, 3)):
        assert doc["meta"][key] == [c for c in range(model.event_classes)
                                    if counts[cases, c] >= 5 and 2 * counts[happened, c] >= counts[cases, c]]
        assert load_action_to_latent(smoke_action_to_latent).config[key] == doc["meta"][key]
    assert serves and {(row, column): count for row, column, count in doc["meta"]["serve_places"]} == serves
    assert load_action_to_latent(smoke_action_to_latent).config["serve_places"] == doc["meta"]["serve_places"]


def test_smoke_map_loads_and_reports(smoke_action_to_latent):
    from common.action_to_latent import check_compatible
    from common.latent_action import load_latent_action_model

    model = load_action_to_latent(smoke_action_to_latent)
    latent = load_latent_action_model(smoke_action_to_latent)
    check_compatible(model, latent)
    assert model.uses_frames and model.context_frames == latent.context_frames
    metrics = json.loads(paths.action_to_latent_metrics_path(smoke_action_to_latent).read_text())
    split = metrics["report_split"]
    assert 0.0 <= metrics[f"{split}_transition_accuracy"] <= 1.0
    assert metrics["report"]["transitions"] == metrics["pairs"][split] > 0
    assert sum(row["count"] for row in metrics["report"]["per_action"].values()) == metrics["pairs"][split]
    past = torch.zeros(2, latent.context_frames, 210, 160, 3, dtype=torch.uint8)
    assert model.previous_actions == 4 and model.knob_frame_skip == 4  # 05's defaults, the recording's frame skip
    codes = model.sample(torch.tensor([2, 3]), past, previous=torch.tensor([[0, 1, 2, 3], [3, 3, 3, 3]]),
                         knob=torch.tensor([0.0, 0.5]))
    assert codes.shape == (2, latent.code_positions) and int(codes.max()) < latent.num_codes
    assert model.event_classes == latent.event_classes
    events = metrics["events"]
    assert np.isfinite([events["prior_nll"], events["corrected_nll"]]).all()
    assert sum(row["count"] for row in events["per_action"].values()) == metrics["pairs"][split]


def test_05_learns_a_synthetic_deterministic_mapping_and_refuses_stale_pairs(smoke_action_to_latent, tmp_path):
    """Pairs whose code is a fixed function of the action: 05 must get every test transition right."""
    source = smoke_action_to_latent.parent / "data"
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(source / "actions", data / "actions")
    (data / "raw_gameplay").symlink_to((source / "raw_gameplay").resolve(), target_is_directory=True)
    pairs_path = paths.pairs_path(data)
    doc = json.loads(pairs_path.read_text())
    doc["meta"].update(num_codes=8, code_positions=2, latent_checkpoint="synthetic.pt")
    for pair in doc["pairs"]:
        pair["latent_code"] = [(3 * pair["action"] + 1) % 8, 7 - pair["action"]]
    pairs_path.write_text(json.dumps(doc))
    ckpt = tmp_path / "ckpt"
    result = run_script("05_train_action_to_latent.py", "--preset", "smoke", "--variant", "action", "--epochs", "20",
                        "--lr", "0.03", "--data-dir", str(data), "--checkpoint-dir", str(ckpt))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(paths.action_to_latent_metrics_path(ckpt).read_text())
    assert metrics["report_split"] == "test" and metrics["test_transition_accuracy"] == 1.0
    model = load_action_to_latent(ckpt)
    assert model.sample(torch.arange(4)).tolist() == [[(3 * a + 1) % 8, 7 - a] for a in range(4)]

    doc["pairs"][3]["action"] = (doc["pairs"][3]["action"] + 1) % 4  # pairs out of step with the data set
    pairs_path.write_text(json.dumps(doc))
    result = run_script("05_train_action_to_latent.py", "--preset", "smoke", "--data-dir", str(data),
                        "--checkpoint-dir", str(ckpt), "--fresh")
    assert result.returncode == 2 and "04_collect_action_latent_pairs.py" in result.stderr
    for pair in doc["pairs"]:                                          # pairs from an older Stage 4
        del pair["since_ball"]
    pairs_path.write_text(json.dumps(doc))
    result = run_script("05_train_action_to_latent.py", "--preset", "smoke", "--data-dir", str(data),
                        "--checkpoint-dir", str(ckpt), "--fresh")
    assert result.returncode == 2 and "older Stage 4" in result.stderr and "Traceback" not in result.stderr


def test_04_without_a_latent_model_names_stage_3(smoke_data, tmp_path):
    result = run_script("04_collect_action_latent_pairs.py", "--data-dir", str(smoke_data),
                        "--checkpoint-dir", str(tmp_path))
    assert result.returncode == 2 and "03_train_latent_action.py" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_trained_map_is_replaced_only_with_fresh(smoke_data, smoke_action_to_latent, tmp_path):
    from conftest import private_data_dir

    data, root = private_data_dir(smoke_data, tmp_path / "data"), tmp_path / "ck"
    shutil.copytree(paths.latent_dir(Path(smoke_action_to_latent)), paths.latent_dir(root))
    shutil.copy(Path(smoke_action_to_latent).parent / "data" / "actions" / "action_latent_pairs.json",
                paths.pairs_path(data))
    trained = paths.action_to_latent_checkpoint(root)
    before = trained.read_bytes()
    refused = run_script("05_train_action_to_latent.py", "--preset", "smoke", "--data-dir", str(data),
                         "--checkpoint-dir", str(root))
    assert refused.returncode == 2 and "--fresh" in refused.stderr and "Traceback" not in refused.stderr
    assert trained.read_bytes() == before
    again = run_script("05_train_action_to_latent.py", "--preset", "smoke", "--data-dir", str(data),
                       "--checkpoint-dir", str(root), "--fresh")
    assert again.returncode == 0, again.stderr[-2000:]


def test_a_class_shows_an_outcome_at_half_its_transitions_or_twice_the_overall_share():
    """Stage 4's serve classes: a class that serves on 44% of its waiting transitions, where all classes
    together serve on 15%, serves; a quick run once found none at the half alone and never served."""
    spec = importlib.util.spec_from_file_location("collect_pairs", ROOT / "04_collect_action_latent_pairs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    waiting = np.zeros(16)
    served = np.zeros(16)
    waiting[[6, 12]] = 8364, 877
    served[[6, 12]] = 1035, 389                      # 12.4% and 44.4%: 15.4% over both
    assert script.ball_outcomes(served, waiting)[0] == [12]
    at_paddle, kept = np.zeros(16), np.zeros(16)
    at_paddle[[5, 9, 11]] = 2234, 2007, 1117
    kept[[5, 9, 11]] = 2131, 1991, 511               # 95%, 99%, 46%: the half decides where it is less
    assert script.ball_outcomes(kept, at_paddle)[0] == [5, 9]
    waiting[3], served[3] = 4, 4                     # too few transitions to tell
    assert 3 not in script.ball_outcomes(served, waiting)[0]
