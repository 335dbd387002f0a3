"""Stage 3: the latent action model, its training script (03) and the frame cache."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.cli import UserError  # noqa: E402
from common.frame_cache import cache_paths, load_frame_cache  # noqa: E402
from common.latent_action import (BREAKOUT_PALETTE, LatentActionModel, VectorQuantizer,  # noqa: E402
                                  fold_cells, load_latent_action_model)
from conftest import private_data_dir, run_script  # noqa: E402

TINY = {"widths": [8, 8, 8], "encoder_width": 8}


def palette_frames(shape: tuple, seed: int = 0) -> torch.Tensor:
    """Random frames drawn from Breakout's palette, uint8 RGB of shape (*shape, 210, 160, 3)."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(BREAKOUT_PALETTE), size=(*shape, 210, 160))
    return torch.from_numpy(np.array(BREAKOUT_PALETTE, dtype=np.uint8)[index])


def test_public_api_shapes_and_valid_pixels():
    for config, positions in ((TINY, 1), ({**TINY, "patch": 4, "widths": [8, 8, 8, 8]}, 1),
                              ({**TINY, "code_grid": [7, 5], "num_codes": 256, "code_dim": 128,
                                "context_frames": 1, "skips": False}, 35), ({**TINY, "event_code": True}, 2)):
        model = LatentActionModel(config).eval()
        k = model.context_frames
        past, nxt = palette_frames((2, k)), palette_frames((2,), seed=1)
        codes = model.encode(past, nxt)
        assert codes.shape == (2, positions) and codes.dtype == torch.int64
        assert model.code_positions == positions
        assert 0 <= int(codes.min()) and int(codes.max()) < model.num_codes
        frames = model.predict(past, codes)
        assert frames.shape == (2, 210, 160, 3) and frames.dtype == torch.uint8
        colours = {tuple(c) for c in frames.reshape(-1, 3).unique(dim=0).tolist()}
        assert colours <= set(BREAKOUT_PALETTE)
        # fed back as the newest past frame, a prediction is a valid input again
        again = model.predict(torch.cat([past[:, 1:], frames[:, None]], 1), codes)
        assert again.shape == frames.shape


def test_the_event_code_sees_the_screen_above_the_paddle_only():
    """A paddle that moves changes only the first code's encoder output; a ball served mid-screen
    changes the event code's."""
    model = LatentActionModel({**TINY, "event_code": True}).eval()
    past = torch.zeros(2, model.context_frames, 210, 160, dtype=torch.uint8)
    nxt = torch.zeros(2, 210, 160, dtype=torch.uint8)
    nxt[1, 189:193, 60:76] = 2                      # the paddle moved in the second sample
    with torch.no_grad():
        model.encode_indices(past, nxt)
        z = model.last_z.view(2, 2, -1)
        assert torch.equal(z[0, 1], z[1, 1]) and not torch.equal(z[0, 0], z[1, 0])
        nxt[1, 124:128, 80:82] = 2                  # and a ball is served at y = 126
        model.encode_indices(past, nxt)
        z_served = model.last_z.view(2, 2, -1)
        assert not torch.equal(z_served[1, 1], z[1, 1])
    with pytest.raises(ValueError, match="does not combine"):
        LatentActionModel({**TINY, "event_code": True, "code_grid": [7, 5]})


def test_event_code_latents_flow_through_stages_4_5_and_play(smoke_data, tmp_path):
    from common.dataset import read_frames, require_dataset
    from common.world_model import NeuralBreakout

    data, root = private_data_dir(smoke_data, tmp_path / "data"), tmp_path / "ck"
    dirs = ["--data-dir", str(data), "--checkpoint-dir", str(root)]
    for args in (("03_train_latent_action.py", "--preset", "smoke", "--event-code", "--max-steps", "8",
                  "--log-dir", str(tmp_path / "runs")),
                 ("04_collect_action_latent_pairs.py",), ("05_train_action_to_latent.py", "--preset", "smoke")):
        result = run_script(*args, *dirs)
        assert result.returncode == 0, result.stderr[-3000:]
    pairs = json.loads((data / "actions" / "action_latent_pairs.json").read_text())
    assert pairs["meta"]["code_positions"] == 2 and all(len(p["latent_code"]) == 2 for p in pairs["pairs"])
    game = NeuralBreakout.load(root, device="cpu")
    game.reset(read_frames(require_dataset(data)[0], 0, game.context_frames))
    assert game.step(1).shape == (210, 160, 3)
    refused = run_script("03_train_latent_action.py", "--preset", "smoke", "--event-code", "--seeds-config", *dirs)
    assert refused.returncode == 2 and "does not combine" in refused.stderr


def test_a_patch_and_depth_that_do_not_tile_the_frame_are_refused():
    with pytest.raises(ValueError, match="at most 3 widths"):
        LatentActionModel({**TINY, "patch": 8, "widths": [8, 8, 8, 8]})


def test_copy_bias_makes_an_untrained_model_repeat_the_last_frame():
    model = LatentActionModel({**TINY, "copy_bias": True}).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    past = palette_frames((1, model.context_frames))
    out = model.predict(past, torch.zeros(1, 1, dtype=torch.long))
    assert torch.equal(out, past[:, -1])


def test_word_moves_fold_and_unfold_pixels_exactly():
    """fold_cells moves cell rows as int32/int64 words; it must equal its pixel_unshuffle path, and
    unfold_pixels must invert fold_pixels."""
    index = torch.randint(0, 10, (2, 3, 224, 160), dtype=torch.uint8)
    strided = index.transpose(-1, -2).contiguous().transpose(-1, -2)   # same values, not contiguous
    for patch in (4, 8):
        assert torch.equal(fold_cells(index, patch), fold_cells(strided, patch))
    model = LatentActionModel(TINY)
    frames = index[:, 0, 7:217]
    assert torch.equal(model.unfold_pixels(model.fold_pixels(model.pad(frames[:, None])[:, 0])), frames)


def test_straight_through_gradient_reaches_encoder():
    model = LatentActionModel(TINY).train()
    past_rgb, nxt_rgb = palette_frames((4, model.context_frames)), palette_frames((4,), seed=2)
    past, nxt = model.to_index(past_rgb), model.to_index(nxt_rgb)
    model.encode_indices(past, nxt)                   # the first training pass places the codebook
    codebook = model.vq.codebook.clone()              # (each pass then moves it by EMA)
    quantized, codes, vq_loss = model.encode_indices(past, nxt)
    # the decoder sees exactly the codebook rows ...
    assert torch.allclose(quantized[:, 0], codebook[codes[:, 0]], atol=1e-5)
    logits = model.decode_logits(past, quantized)
    loss = F.cross_entropy(logits.reshape(-1, model.num_colours), model.folded_target(nxt).reshape(-1))
    (loss + vq_loss).backward()
    # ... and yet the reconstruction gradient reaches the encoder (straight-through)
    for module in (model.encoder_stem, model.to_code):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=8, dim=4, decay=0.9).train()
    spread = F.normalize(torch.randn(256, 4), dim=-1)
    vq(spread)                                       # codebook placed on spread-out vectors
    one_direction = F.normalize(torch.tensor([[1.0, 0.2, 0.0, 0.0]]) + 0.01 * torch.randn(256, 4), dim=-1)
    for _ in range(30):                               # collapse: every vector lands on one code
        _, codes, _ = vq(one_direction)
    assert len(codes.unique()) == 1
    vq.counts.zero_()
    vq(one_direction)
    assert vq.restart_dead_codes(spread, threshold=0.01) == 7
    _, codes, _ = vq(spread)
    assert len(codes.unique()) >= 6


def test_smoke_training_writes_checkpoints_and_metrics(smoke_latent):
    folder = Path(smoke_latent) / "latent_action"
    for name in ("best.pt", "latest.pt", "metrics.json", "samples.png", "codebook_usage.png", "rollout.gif"):
        assert (folder / name).stat().st_size > 0, name
    latest = torch.load(folder / "latest.pt", weights_only=True)
    assert latest["kind"] == "latent_action" and latest["step"] > 0
    metrics = json.loads((folder / "metrics.json").read_text())
    one = metrics["one_step"]
    assert np.isfinite([one["psnr"], one["ssim"], one["copy_last_psnr"], metrics["delta_psnr"]]).all()
    assert len(metrics["psnr_by_step"]) >= 4 and metrics["codes"]["perplexity"] >= 1.0
    model = load_latent_action_model(smoke_latent, which="best")
    past = palette_frames((1, model.context_frames))
    assert model.predict(past, model.encode(past, past[:, -1])).shape == (1, 210, 160, 3)


def test_resume_continues_from_latest(smoke_data, smoke_latent, tmp_path):
    root = tmp_path / "ck"
    shutil.copytree(smoke_latent, root)
    before = torch.load(root / "latent_action" / "latest.pt", weights_only=True)["step"]
    result = run_script("03_train_latent_action.py", "--preset", "smoke", "--resume", "--data-dir", str(smoke_data),
                        "--checkpoint-dir", str(root), "--log-dir", str(tmp_path / "runs"),
                        "--time-budget", "5", "--max-steps", str(before + 3))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from step {before}" in result.stdout
    assert torch.load(root / "latent_action" / "latest.pt", weights_only=True)["step"] == before + 3


def test_frame_cache_is_reused_and_rebuilt_when_the_data_set_changes(smoke_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(smoke_data / "actions", data / "actions")
    shutil.copytree(smoke_data / "raw_gameplay", data / "raw_gameplay")
    first = load_frame_cache(data)
    array_path, _ = cache_paths(data)
    stamp = array_path.stat().st_mtime_ns
    assert load_frame_cache(data).fingerprint == first.fingerprint and array_path.stat().st_mtime_ns == stamp
    # classes round-trip to the recorded pixels
    from common.dataset import load_episodes, read_frames
    episode = load_episodes(data)[0]
    rgb = np.array(first.palette, dtype=np.uint8)[np.asarray(first.episode_frames(first.episodes[0]))[:3]]
    assert np.array_equal(rgb, read_frames(episode, 0, 3))
    # drop the last episode from its level: a different data set, so the cache is rebuilt
    path = next((data / "actions").glob("skill_level_*_actions.json"))
    doc = json.loads(path.read_text())
    dropped = doc["episodes"].pop()
    path.write_text(json.dumps(doc))
    shutil.rmtree(data / dropped["folder"])
    second = load_frame_cache(data)
    assert second.fingerprint != first.fingerprint
    assert len(second.frames) == len(first.frames) - dropped["num_frames"]


def test_missing_or_corrupt_data_set_is_a_clear_error(smoke_data, tmp_path):
    result = run_script("03_train_latent_action.py", "--preset", "smoke", "--data-dir", str(tmp_path / "nothing"),
                        "--checkpoint-dir", str(tmp_path / "ck"))
    assert result.returncode == 2 and "02_record_videos.py" in result.stderr and "Traceback" not in result.stderr
    data = tmp_path / "data"
    shutil.copytree(smoke_data / "actions", data / "actions")
    shutil.copytree(smoke_data / "raw_gameplay", data / "raw_gameplay")
    victim = sorted((data / "raw_gameplay").rglob("frame_00003.png"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    result = run_script("03_train_latent_action.py", "--preset", "smoke", "--data-dir", str(data),
                        "--checkpoint-dir", str(tmp_path / "ck"))
    assert result.returncode == 2 and "02_record_videos.py" in result.stderr and "Traceback" not in result.stderr


def test_missing_or_foreign_checkpoint_names_stage_3(tmp_path):
    with pytest.raises(UserError, match="03_train_latent_action.py"):
        load_latent_action_model(tmp_path)
    (tmp_path / "latent_action").mkdir()
    torch.save({"kind": "dqn", "format": 1}, tmp_path / "latent_action" / "best.pt")
    with pytest.raises(UserError, match="latent_action"):
        load_latent_action_model(tmp_path)


def test_loss_weights_come_from_the_past_frames_only():
    """The extra weight sits near motion in the past frames, whatever the target frame is: a weight
    that follows the target's changes would reward drawing a change wherever one is possible."""
    import importlib

    train_script = importlib.import_module("03_train_latent_action")
    model = LatentActionModel(TINY)
    past = torch.zeros(1, model.context_frames, 210, 160, dtype=torch.uint8)
    past[0, -1, 100:104, 50:52] = 2          # a ball appears in the newest past frame
    near = train_script.motion_cells(model, fold_cells(model.pad(past), model.patch))
    top = model.pad_h // 2
    cell = ((100 + top) // model.patch, 50 // model.patch)
    assert near[0, cell[0], cell[1]] and near[0, cell[0] + 1, cell[1] + 1]   # its cell and the next ones
    assert int(near.sum()) <= 3 * 3 * 2 and not near[0, 0, 0]                 # and nothing far away
    weights = []
    for target_row in (60, 150):  # two different next frames: the ball far up or far down
        nxt = torch.zeros(1, 210, 160, dtype=torch.uint8)
        nxt[0, target_row:target_row + 4, 50:52] = 2
        weights.append(train_script.loss_terms(model, past, nxt, motion_weight=20.0, keep_static=1.0)[3][3])
    assert torch.equal(weights[0], weights[1])
    assert set(weights[0].unique().tolist()) == {0.0, 1.0, 21.0}   # padding, elsewhere, near the motion


def test_appear_weight_falls_on_changes_far_from_past_motion_only():
    """A ball served far from anything that moved weighs 1 + appear_weight; a change next to the past
    motion keeps the motion weight, so the moving ball is not rewarded for smearing."""
    import importlib

    train_script = importlib.import_module("03_train_latent_action")
    model = LatentActionModel(TINY)
    past = torch.zeros(1, model.context_frames, 210, 160, dtype=torch.uint8)
    past[0, -1, 100:104, 50:52] = 2                    # motion around (100, 50)
    nxt = past[:, -1].clone()
    nxt[0, 100:104, 52:54] = 2                         # the ball moves on, next to the motion
    nxt[0, 150:154, 120:122] = 2                       # and a new ball appears far away
    top = model.pad_h // 2
    near_cell = ((100 + top) // model.patch, 52 // model.patch)
    far_cell = ((150 + top) // model.patch, 120 // model.patch)

    def cell_weights(appear_weight: float) -> torch.Tensor:
        weight = train_script.loss_terms(model, past, nxt, motion_weight=20.0, keep_static=1.0,
                                         appear_weight=appear_weight)[3][3]
        rows, cols = (210 + model.pad_h) // model.patch, (160 + model.pad_w) // model.patch
        return weight.reshape(1, rows, cols, -1).amax(-1)

    plain, served = cell_weights(0.0), cell_weights(50.0)
    assert plain[0, far_cell[0], far_cell[1]] == 1.0 and served[0, far_cell[0], far_cell[1]] == 51.0
    assert plain[0, near_cell[0], near_cell[1]] == served[0, near_cell[0], near_cell[1]] == 21.0
    assert set(served[served != plain].tolist()) == {51.0}           # only cells of the new ball


def test_own_context_replaces_the_newest_past_frames_with_the_models_drawing():
    """Scheduled sampling: with a model that only copies the last frame, the frames it draws itself
    are copies of the last real frame it started from."""
    import importlib

    train_script = importlib.import_module("03_train_latent_action")
    model = LatentActionModel({**TINY, "copy_bias": True})
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    k = model.context_frames
    frames = model.to_index(palette_frames((2, k + 2), seed=3))
    context = train_script.own_context(model, frames, depth=2)
    assert context.shape == (2, k, 210, 160) and model.training
    assert torch.equal(context[:, :k - 2], frames[:, 2:k])          # the real frames that remain
    assert torch.equal(context[:, -1], frames[:, k - 1]) and torch.equal(context[:, -2], frames[:, k - 1])
