"""The ball committer: one whole ball where the model's ball-colour probability says, never a smear."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common.ball_sampler import (BALL_H, BALL_W, ball_in_play, ball_placements, commit_ball, commit_wall,
                                 serve_place)
from common.detectors import BRICK_TOP, ball_count, ball_xy, brick_mask

BALL, BLACK = 2, 0
PALETTE = np.zeros((9, 3), np.uint8)
PALETTE[BALL] = (200, 72, 72)


def rgb(classes: torch.Tensor) -> np.ndarray:
    return PALETTE[classes.numpy()]


def split_serve(share: float = 1.0) -> torch.Tensor:
    """A served ball's probability split over three places (as a deterministic decoder averages it):
    `share` of a ball in all, 1/4 at x 16, 1/2 at x 80, 1/4 at x 140."""
    prob = torch.zeros(1, 210, 160)
    for x, weight in ((16, 0.25), (80, 0.5), (140, 0.25)):
        prob[0, 125:125 + BALL_H, x:x + BALL_W] = share * weight
    return prob


def test_a_frame_that_shows_a_whole_ball_is_left_alone():
    classes = torch.zeros(1, 210, 160, dtype=torch.uint8)
    classes[0, 100:104, 50:52] = BALL
    out = commit_ball(classes, split_serve().__getitem__, BALL, BLACK, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, classes)


def test_a_split_ball_is_drawn_whole_at_one_place_in_proportion_to_its_probability():
    classes = torch.zeros(1, 210, 160, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    places = []
    for _ in range(400):
        out = rgb(commit_ball(classes, split_serve().__getitem__, BALL, BLACK, 1.0, generator)[0])
        assert ball_count(out) == 1 and (out[..., 0] == 200).sum() == BALL_H * BALL_W
        places.append(round(ball_xy(out)[0]))
    share = {x: places.count(x) / len(places) for x in set(places)}
    assert set(share) == {16, 80, 140}
    assert abs(share[80] - 0.5) < 0.08 and abs(share[16] - 0.25) < 0.08
    most_likely = rgb(commit_ball(classes, split_serve().__getitem__, BALL, BLACK, 0.0)[0])
    assert round(ball_xy(most_likely)[0]) == 80


def test_the_chance_of_a_ball_is_the_expected_number_of_balls():
    classes = torch.zeros(1, 210, 160, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(1)
    drawn = [ball_count(rgb(commit_ball(classes, split_serve(0.3).__getitem__, BALL, BLACK, 1.0, generator)[0]))
             for _ in range(500)]
    assert abs(np.mean(drawn) - 0.3) < 0.06 and set(drawn) <= {0, 1}
    assert ball_count(rgb(commit_ball(classes, split_serve(0.3).__getitem__, BALL, BLACK, 0.0)[0])) == 0   # < half a ball
    faint = torch.full((1, 210, 160), 0.01)             # noise below the floor, however much of it
    assert torch.equal(commit_ball(classes, faint.__getitem__, BALL, BLACK, 1.0, generator), classes)


def test_specks_of_a_fading_ball_are_replaced_by_one_whole_ball():
    classes = torch.zeros(1, 210, 160, dtype=torch.uint8)
    classes[0, 60:62, 30] = BALL                       # two red pixels left of a ball
    prob = torch.zeros(1, 210, 160)
    prob[0, 59:63, 30:32] = 0.7
    out = rgb(commit_ball(classes, prob.__getitem__, BALL, BLACK, 0.0)[0])
    assert ball_count(out) == 1 and ball_xy(out) == (30.5, 60.5)


def test_a_ball_in_flight_stays_in_play_where_the_model_puts_it_within_reach():
    from common.ball_sampler import FLIGHT_ROWS, STEP_REACH, balls_to_keep

    last = torch.zeros(1, 210, 160, dtype=torch.uint8)
    last[0, 120:124, 60:62] = BALL                   # the previous frame: a ball mid-screen
    assert balls_to_keep(last, BALL) == [(120, 60, 0)]
    assert balls_to_keep(last, BALL, in_flight=False) == [None]
    classes = torch.zeros(1, 210, 160, dtype=torch.uint8)
    prob = torch.zeros(1, 210, 160)
    prob[0, 114:118, 64:66] = 0.01                   # a hundredth of a ball, 6 px up and 4 px right
    prob[0, 114:118, 140:142] = 0.5                  # more mass out of one step's reach
    for temperature in (1.0, 0.0):
        generator = torch.Generator().manual_seed(0)
        kept = [rgb(commit_ball(classes, prob.__getitem__, BALL, BLACK, temperature, generator, [(120, 60, 0)])[0])
                for _ in range(20)]
        assert all(ball_count(f) == 1 and ball_xy(f) == (64.5, 115.5) for f in kept)
    nothing = torch.zeros(1, 210, 160)               # the model sees no ball at all: none is invented
    assert torch.equal(commit_ball(classes, nothing.__getitem__, BALL, BLACK, 1.0, None, [(120, 60, 0)]), classes)

    low = torch.zeros(1, 210, 160, dtype=torch.uint8)
    low[0, FLIGHT_ROWS[1]:FLIGHT_ROWS[1] + 4, 60:62] = BALL   # near the paddle: it may leave the screen
    high = torch.zeros(1, 210, 160, dtype=torch.uint8)
    high[0, 70:74, 60:62] = BALL                                # among the bricks: still in flight
    assert balls_to_keep(torch.cat([low, high]), BALL) == [None, (70, 60, 0)]
    assert FLIGHT_ROWS[1] + STEP_REACH == 189                   # the paddle's first row
    generator = torch.Generator().manual_seed(1)
    faint = [ball_count(rgb(commit_ball(classes, prob.__getitem__, BALL, BLACK, 1.0, generator, [None])[0]))
             for _ in range(300)]
    assert 0.35 < np.mean(faint) < 0.65             # without a ball in flight: the expected count's chance (0.5)


def test_a_ball_in_flight_goes_to_the_heaviest_peak_within_reach_at_any_temperature():
    """The step's random event was the draw: a ball kept is not drawn again among the decoder's peaks."""
    classes = torch.zeros(1, 210, 160, dtype=torch.uint8)
    prob = torch.zeros(1, 210, 160)
    prob[0, 114:118, 64:66] = 0.1                    # a lighter peak, 6 px up and 4 px right
    prob[0, 126:130, 56:58] = 0.2                    # the heavier one, 6 px down and 4 px left
    generator = torch.Generator().manual_seed(0)
    for temperature in (1.0, 2.0, 0.0):
        places = {ball_xy(rgb(commit_ball(classes, prob.__getitem__, BALL, BLACK, temperature, generator,
                                          [(120, 60, 0)])[0])) for _ in range(30)}
        assert places == {(56.5, 127.5)}
    # without a ball kept the same mass is still a draw among the peaks
    free = {ball_xy(rgb(commit_ball(classes, (prob * 3).__getitem__, BALL, BLACK, 1.0, generator, [None])[0]))
            for _ in range(200)} - {None}
    assert free == {(56.5, 127.5), (64.5, 115.5)}


def test_one_ball_is_left_the_one_nearest_the_ball_in_flight_and_specks_go():
    classes = torch.zeros(1, 210, 160, dtype=torch.uint8)
    classes[0, 116:120, 62:64] = BALL                 # the ball, one step from the last one
    classes[0, 150:154, 20:22] = BALL                 # a second whole ball: Breakout has one
    classes[0, 100, 100:102] = BALL                   # a speck
    nothing = torch.zeros(1, 210, 160)
    out = rgb(commit_ball(classes, nothing.__getitem__, BALL, BLACK, 1.0, None, [(120, 60, 0)])[0])
    assert ball_count(out) == 1 and ball_xy(out) == (62.5, 117.5)
    out = rgb(commit_ball(classes, nothing.__getitem__, BALL, BLACK, 1.0, None, [(148, 22, 0)])[0])
    assert ball_count(out) == 1 and ball_xy(out) == (20.5, 151.5)


def test_a_ball_smeared_over_two_places_becomes_one_whole_ball_and_a_red_brick_stays():
    """The decoder, unsure where the ball went, draws it at two overlapping places (a 4 x 6 blob, not
    ball-sized): the smear is cleared and one ball drawn where its probability peaks, apart from nothing."""
    classes = torch.zeros(1, 210, 160, dtype=torch.uint8)
    classes[0, 57:63, 8:16] = BALL                    # a single red brick of the top row (8 x 6) ...
    classes[0, 125:129, 62:64] = BALL                 # ... and the ball drawn at two touching places
    classes[0, 127:131, 60:62] = BALL
    prob = torch.zeros(1, 210, 160)
    prob[0, 125:129, 62:64] = 0.6
    prob[0, 127:131, 60:62] = 0.4
    for temperature in (1.0, 0.0):
        out = rgb(commit_ball(classes, prob.__getitem__, BALL, BLACK, temperature, torch.Generator().manual_seed(0),
                              [(120, 60, 0)])[0])
        assert ball_count(out) == 1 and ball_xy(out) == (62.5, 126.5)
        assert (out[57:63, 8:16, 0] == 200).all()     # the brick is no smear


def test_a_second_ball_beside_the_paddle_goes_while_the_ball_above_is_kept():
    classes = torch.zeros(1, 210, 160, dtype=torch.uint8)
    classes[0, 116:120, 62:64] = BALL                 # the ball in flight, one step from the last one
    classes[0, 190:194, 30:32] = BALL                 # a ball the decoder drew beside the paddle
    classes[0, 189:193, 100:116] = BALL               # the paddle
    nothing = torch.zeros(1, 210, 160)
    out = rgb(commit_ball(classes, nothing.__getitem__, BALL, BLACK, 1.0, None, [(120, 60, 0)])[0])
    assert ball_count(out) == 1 and ball_xy(out) == (62.5, 117.5)
    assert (out[189:193, 100:116, 0] == 200).all()    # the paddle stays
    alone = classes.clone()
    alone[0, 116:120, 62:64] = BLACK                   # no ball above and none kept: a missed ball passing by
    assert torch.equal(commit_ball(alone, nothing.__getitem__, BALL, BLACK, 1.0, None, [None]), alone)


def test_a_serve_draws_a_ball_for_sure_where_the_thin_mass_peaks_between_bricks_and_paddle():
    """Given a serve class the decoder may expect a fraction of a ball: the serve still shows one, in
    proportion to where the mass lies, and never among the bricks (whose red is the ball's)."""
    classes = torch.zeros(1, 210, 160, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(2)
    thin = split_serve(0.2)
    thin[0, 70:74, 40:42] = 0.5      # more mass among the bricks than at any serve place
    places = []
    for _ in range(300):
        out = rgb(commit_ball(classes, thin.__getitem__, BALL, BLACK, 1.0, generator, serve=[True])[0])
        assert ball_count(out) == 1
        places.append(round(ball_xy(out)[0]))
    assert set(places) == {16, 80, 140} and abs(places.count(80) / len(places) - 0.5) < 0.1
    assert round(ball_xy(rgb(commit_ball(classes, thin.__getitem__, BALL, BLACK, 0.0, serve=[True])[0]))[0]) == 80
    # without the serve the same thin mass draws a ball a fifth of the time, and no mass draws none
    alone = [ball_count(rgb(commit_ball(classes, split_serve(0.2).__getitem__, BALL, BLACK, 1.0, generator)[0]))
             for _ in range(300)]
    assert 0.1 < np.mean(alone) < 0.3
    empty = torch.zeros(1, 210, 160)
    assert torch.equal(commit_ball(classes, empty.__getitem__, BALL, BLACK, 1.0, generator, serve=[True]), classes)


def test_a_serve_lands_where_the_recorded_serves_landed_in_their_proportions():
    """With serve places (Stage 4's counts) a serve lands at one of them, as often as the recorded games'
    serves did there, wherever the decoder put its ball; temperature 0 takes the commonest place."""
    classes = torch.zeros(1, 210, 160, dtype=torch.uint8)
    classes[0, 150:154, 60:62] = BALL            # the decoder's own serve, at a place no recorded serve landed
    places = torch.tensor([[124, 17, 10], [124, 80, 30], [124, 141, 10]])
    generator = torch.Generator().manual_seed(3)
    landed = []
    for _ in range(400):
        out = commit_ball(classes, split_serve(0.2).__getitem__, BALL, BLACK, 1.0, generator, serve=[True],
                          serve_places=places)
        assert ball_count(rgb(out[0])) == 1 and int((out[0] == BALL).sum()) == BALL_H * BALL_W
        landed.append(serve_place(out[0].numpy(), BALL))
    share = {place: landed.count(place) / len(landed) for place in set(landed)}
    assert set(share) == {(124, 17), (124, 80), (124, 141)}
    assert abs(share[(124, 80)] - 0.6) < 0.08 and abs(share[(124, 17)] - 0.2) < 0.06
    commonest = commit_ball(classes, split_serve(0.2).__getitem__, BALL, BLACK, 0.0, serve=[True], serve_places=places)
    assert serve_place(commonest[0].numpy(), BALL) == (124, 80)
    # not a serve: the decoder's ball stays where it drew it
    assert torch.equal(commit_ball(classes, split_serve(0.2).__getitem__, BALL, BLACK, 1.0, generator,
                                   serve=[False], serve_places=places), classes)


def test_serve_place_is_the_top_left_of_the_one_ball_below_the_bricks():
    frame = np.zeros((210, 160), np.uint8)
    assert serve_place(frame, BALL) is None
    frame[124:128, 80:82] = BALL
    assert serve_place(frame, BALL) == (124, 80)
    frame[60:66, 8:16] = BALL                    # a red brick is not a ball
    assert serve_place(frame, BALL) == (124, 80)
    frame[140:144, 30:32] = BALL                 # two balls: no one place
    assert serve_place(frame, BALL) is None


def test_a_broken_brick_stays_broken_unless_the_wall_was_gone():
    wall_colour = 5
    before = torch.zeros(2, 210, 160, dtype=torch.uint8)
    before[:, BRICK_TOP:BRICK_TOP + 36, 8:152] = wall_colour
    before[:, BRICK_TOP + 30:BRICK_TOP + 36, 16:24] = BLACK      # the bottom row's second brick is broken
    after = before.clone()
    after[:, BRICK_TOP + 30:BRICK_TOP + 35, 16:24] = wall_colour  # the decoder redraws most of it
    after[:, BRICK_TOP + 31:BRICK_TOP + 35, 18:20] = BALL         # with the ball inside it
    after[:, BRICK_TOP:BRICK_TOP + 6, 24:32] = BLACK              # and breaks a brick in the top row
    out = commit_wall(after, before, BLACK)
    colours = PALETTE.copy()
    colours[wall_colour] = (66, 72, 200)
    mask = brick_mask(colours[out[0].numpy()])
    assert not mask[5, 1] and not mask[0, 2] and mask.sum() == 108 - 2
    assert int((out[0, BRICK_TOP + 30:BRICK_TOP + 36, 16:24] != BLACK).sum()) == 0
    assert torch.equal(out[0, :BRICK_TOP], after[0, :BRICK_TOP])
    assert torch.equal(out[0, BRICK_TOP + 36:], after[0, BRICK_TOP + 36:])
    # a wall that was gone refills: Breakout draws a new one
    empty = before.clone()
    empty[:, BRICK_TOP:BRICK_TOP + 36] = BLACK
    assert torch.equal(commit_wall(after, empty, BLACK), after)
    assert commit_wall(before, before, BLACK) is before        # nothing came back: the same frames


def test_ball_placements_are_the_mass_each_ball_sized_box_covers():
    mass = torch.rand(183, 144, generator=torch.Generator().manual_seed(0))
    mass[mass < 0.9] = 0
    pooled = F.avg_pool2d(mass[None, None], (BALL_H, BALL_W), stride=1)[0, 0] * (BALL_H * BALL_W)
    placements = ball_placements(mass)
    assert placements.shape == pooled.shape == (183 - BALL_H + 1, 144 - BALL_W + 1)
    assert torch.allclose(placements, pooled, atol=1e-5)
    assert torch.isclose(placements[10, 20], mass[10:10 + BALL_H, 20:20 + BALL_W].sum())


def test_ball_in_play_looks_between_the_bricks_and_the_paddle():
    frames = torch.zeros(4, 210, 160, dtype=torch.uint8)
    frames[1, 130:134, 60:62] = BALL        # a ball in play
    frames[2, 57:63, 8:152] = BALL          # the red bricks
    frames[3, 189:193, 60:76] = BALL        # the paddle
    assert ball_in_play(frames, BALL).tolist() == [False, True, False, False]


def test_the_balls_last_move_keeps_it_in_flight_until_it_can_reach_the_paddle():
    """Near the paddle the ball's speed says whether this step can take it past: a ball falling 4 px a step
    from 8 rows above the paddle is still in flight, one falling 8 px a step may reach the paddle (the
    event decides), and a rising ball always stays."""
    from common.ball_sampler import AT_PADDLE, balls_to_keep

    last = torch.zeros(3, 210, 160, dtype=torch.uint8)
    last[:, 177:181, 60:62] = BALL                   # the ball's bottom row 8 px above the paddle (row 189)
    before = torch.zeros(3, 210, 160, dtype=torch.uint8)
    before[0, 173:177, 58:60] = BALL                 # 4 px higher: next at rows 181-184, above the paddle
    before[1, 169:173, 58:60] = BALL                 # 8 px higher: next at rows 185-188, touching it
    before[2, 181:185, 58:60] = BALL                 # 4 px lower: rising
    assert AT_PADDLE.start <= 177
    assert balls_to_keep(last, BALL) == [None, None, None]                    # no speed: the event decides
    assert balls_to_keep(last, BALL, before=before) == [(177, 60, 1), (177, 60, 1), (177, 60, -1)]
    before[1, 165:169, 58:60], before[1, 169:173, 58:60] = BALL, BLACK        # 12 px a step: it may reach
    assert balls_to_keep(last, BALL, before=before) == [(177, 60, 1), None, (177, 60, -1)]
    assert balls_to_keep(last, BALL, before=before, in_flight=False) == [None, None, None]
    assert balls_to_keep(last, BALL, before=torch.zeros_like(before)) == [None, None, None]  # no ball before
    classes = torch.zeros(1, 210, 160, dtype=torch.uint8)
    prob = torch.zeros(1, 210, 160)
    prob[0, 170:174, 64:66] = 0.3                    # the model half expects a bounce up, 7 px above ...
    prob[0, 181:185, 62:64] = 0.1                    # ... and a little of the ball falling on
    for heading, place in ((1, (62.5, 182.5)), (-1, (64.5, 171.5)), (0, (64.5, 171.5))):
        out = rgb(commit_ball(classes, prob.__getitem__, BALL, BLACK, 0.0, None, [(177, 60, heading)])[0])
        assert ball_xy(out) == place                 # a falling ball goes on down: no bounce off bare floor


def test_a_ball_at_the_paddle_is_kept_when_the_random_event_sends_it_back():
    """Just above the paddle the ball may come back or be missed: the event class decides where the paddle
    can reach the ball, and a ball touching the paddle (which has the ball's colour) is still found on its own."""
    from common.ball_sampler import balls_to_keep

    last = torch.zeros(2, 210, 160, dtype=torch.uint8)
    last[:, 189:193, 50:66] = BALL                   # the paddle
    last[:, 185:189, 56:58] = BALL                   # the ball touching it from above
    back, other = torch.tensor([3]), torch.tensor([3, 9])
    assert balls_to_keep(last, BALL, other, back) == [(185, 56, 0), None]
    assert balls_to_keep(last, BALL, other, back, at_paddle=False) == [None, None]
    assert balls_to_keep(last, BALL) == [None, None]                   # no events: the expected count decides
    far = last[:1].clone()
    far[0, 189:193] = BLACK
    far[0, 189:193, 80:96] = BALL                    # the paddle 31 px from the ball's centre: out of reach
    assert balls_to_keep(far, BALL, back, back) == [None]
    far[0, 189:193] = BLACK
    far[0, 189:193, 72:88] = BALL                    # 23 px: within reach (24 px)
    assert balls_to_keep(far, BALL, back, back) == [(185, 56, 0)]
    classes = last[:1].clone()
    classes[0, 185:189, 56:58] = BLACK               # the decoder lost the ball ...
    prob = torch.zeros(1, 210, 160)
    prob[0, 178:182, 52:54] = 0.05                   # ... but for a twentieth of it going back up
    prob[0, 189:193, 66:70] = 0.9                    # the paddle's edge, uncertain: never a ball
    out = rgb(commit_ball(classes, prob.__getitem__, BALL, BLACK, 1.0, torch.Generator().manual_seed(0),
                          [(185, 56, 0)])[0])
    assert ball_count(out) == 1 and ball_xy(out) == (52.5, 179.5)
    assert (out[189:193] == rgb(classes[0])[189:193]).all()             # the paddle rows are left alone


def test_a_paddle_the_decoder_dropped_is_drawn_whole_where_its_colour_peaks_or_where_it_was():
    from common.ball_sampler import commit_paddle

    previous = torch.zeros(3, 210, 160, dtype=torch.uint8)
    previous[:, 189:193, 40:56] = BALL                 # the paddle one step before
    classes = torch.zeros(3, 210, 160, dtype=torch.uint8)
    classes[2, 189:193, 90:106] = BALL                 # frame 2 shows its paddle: left alone
    prob = torch.zeros(3, 210, 160)
    prob[0, 189:193, 60:76] = 0.4                      # frame 0: the decoder's paddle too faint to win the argmax
    prob[1, 189:193, 100:104] = 0.1                    # frame 1: no paddle to speak of: where it was
    out = commit_paddle(classes, prob.__getitem__, BALL, previous)
    assert (out[0, 189:193] == BALL).nonzero()[:, 1].unique().tolist() == list(range(60, 76))
    assert (out[1, 189:193] == BALL).nonzero()[:, 1].unique().tolist() == list(range(40, 56))
    assert torch.equal(out[2], classes[2]) and torch.equal(classes[0], torch.zeros(210, 160, dtype=torch.uint8))
    assert (out[0, :189] == 0).all() and (out[0, 193:] == 0).all()     # nothing drawn outside the paddle rows
