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

from common import paths  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.frame_cache import cache_paths, load_frame_cache  # noqa: E402
from common.latent_action import (BREAKOUT_PALETTE, LatentActionModel, PatchEmbedding, VectorQuantizer,  # noqa: E402
                                  fold_cells, load_latent_action_model)
from common.latent_training import use_bf16  # noqa: E402
from conftest import run_script  # noqa: E402

TINY = {"widths": [8, 8, 8], "encoder_width": 8}


def palette_frames(shape: tuple, seed: int = 0) -> torch.Tensor:
    """Random frames drawn from Breakout's palette, uint8 RGB of shape (*shape, 210, 160, 3)."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(BREAKOUT_PALETTE), size=(*shape, 210, 160))
    return torch.from_numpy(np.array(BREAKOUT_PALETTE, dtype=np.uint8)[index])


def test_public_api_shapes_and_valid_pixels():
    for config, positions in ((TINY, 1), ({**TINY, "patch": 4, "widths": [8, 8, 8, 8]}, 1),
                              ({**TINY, "code_grid": [7, 5], "num_codes": 256, "code_dim": 128, "action_view": "screen",
                                "context_frames": 1, "skips": False, "event_classes": 0}, 35),
                              ({**TINY, "action_view": "screen"}, 1), ({**TINY, "event_classes": 0}, 1)):
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


def test_the_event_posterior_sees_the_screen_above_the_paddle_only():
    """A paddle that moves changes the action code's encoder output only; a ball served mid-screen or a
    brick that breaks changes the event posterior's only."""
    model = LatentActionModel(TINY).eval()
    past = torch.zeros(2, model.context_frames, 210, 160, dtype=torch.uint8)
    nxt = torch.zeros(2, 210, 160, dtype=torch.uint8)
    nxt[1, 189:193, 60:76] = 2                      # the paddle moved in the second sample
    with torch.no_grad():
        model.encode_indices(past, nxt)
        z, events = model.last_z.clone(), model.event_posterior_logits(model.last_cells)
        assert torch.equal(events[0], events[1]) and not torch.equal(z[0], z[1])
        nxt[1, 124:128, 80:82] = 2                  # and a ball is served at y = 126
        nxt[1, 57:63, 8:16] = 3                     # and a brick appears in the top rows
        model.encode_indices(past, nxt)
        assert not torch.equal(model.event_posterior_logits(model.last_cells)[1], events[1])
        assert torch.equal(model.last_z[1], z[1])
    with pytest.raises(ValueError, match="does not combine"):
        LatentActionModel({**TINY, "code_grid": [7, 5], "action_view": "screen"})
    with pytest.raises(ValueError, match="whole screen"):
        LatentActionModel({**TINY, "code_grid": [7, 5], "event_classes": 0})


def test_a_model_from_before_action_view_and_event_norm_loads_as_it_was_trained(tmp_path):
    """Checkpoints saved without action_view and event_norm (the shipped ones among them) keep their encoder
    over the whole screen and their event heads without layer norm."""
    from common.io import save_checkpoint
    from common.paths import latent_checkpoint
    old = LatentActionModel({**TINY, "action_view": "screen", "event_norm": False})
    config = {key: value for key, value in old.config.items() if key not in ("action_view", "event_norm")}
    path = latent_checkpoint(tmp_path, "best")
    path.parent.mkdir(parents=True)
    save_checkpoint(path, "latent_action", model=old.state_dict(), config=config)
    loaded = load_latent_action_model(tmp_path)
    assert loaded.action_view == "screen" and loaded.action_first_row == 0
    assert isinstance(loaded.event_features_norm, torch.nn.Identity) and len(loaded.prior_head) == 3
    assert LatentActionModel(TINY).action_first_row > 0


def test_the_event_logits_stay_bounded_when_the_trunks_features_grow():
    """Without layer norm the event heads' logits scale with their unnormalised trunks' features (which grew
    into the hundreds in training and froze the softmaxes); with it they do not."""
    past = palette_frames((2, 3))
    nxt = palette_frames((2,), seed=1)
    for event_norm in (True, False):
        torch.manual_seed(0)
        model = LatentActionModel({**TINY, "event_norm": event_norm}).eval()
        spreads = []
        for scale in (1.0, 50.0):
            with torch.no_grad():
                if scale != 1.0:
                    for stem in (model.event_stem, model.prior_stem):
                        stem.proj.weight.mul_(scale)
                        stem.proj.bias.mul_(scale)
                index, code = model.to_index(past), torch.zeros(2, 1, dtype=torch.long)
                model.encode_indices(index, model.to_index(nxt))
                posterior = model.event_posterior_logits(model.last_cells)
                prior = model.event_prior(index, code)
                spreads.append(torch.stack([posterior.amax(-1) - posterior.amin(-1), prior.amax(-1) - prior.amin(-1)]))
        growth = spreads[1] / spreads[0]
        if event_norm:
            assert (growth < 3).all(), growth
        else:
            assert (growth > 10).all(), growth


def test_the_event_information_is_zero_for_one_class_or_uniform_posteriors_and_floored_in_the_loss():
    from common.latent_training import event_information, loss_terms

    one_class = torch.full((8, 4), 0.01)
    one_class[:, 2] = 0.97
    assert event_information(one_class).abs() < 1e-5
    assert event_information(torch.full((8, 4), 0.25)).abs() < 1e-5
    halves = one_class.clone()
    halves[4:] = halves[4:].roll(1, -1)                  # half the transitions get another class
    usage = torch.tensor([0.01, 0.01, 0.49, 0.49])
    expected = -(usage * usage.log()).sum() + (one_class[0] * one_class[0].log()).sum()   # ~0.62, near log 2
    assert abs(event_information(halves).item() - expected.item()) < 1e-5
    model = LatentActionModel(TINY).eval()           # eval: the class is the posterior's argmax, the codebook stays
    past, nxt = model.to_index(palette_frames((4, 3))), model.to_index(palette_frames((4,), seed=2))
    losses = []
    for floor in (0.0, 5.0):                             # 5 nats: above what 4 transitions can carry
        torch.manual_seed(3)
        _, latent_loss, _, _, stats = loss_terms(model, past, nxt, 20.0, 1.0, info_floor=floor)
        losses.append(latent_loss)
    assert torch.allclose(losses[1] - losses[0], torch.tensor(5.0 - stats["event_info"]), atol=1e-4)
    (losses[1] - losses[0]).backward()                   # the floor's shortfall alone reaches the posterior
    assert model.to_event_logits.weight.grad.abs().sum() > 0


def test_the_event_class_changes_the_drawn_frame_and_the_prior_sees_past_and_action():
    model = LatentActionModel(TINY).eval()
    with torch.no_grad():
        model.event_embedding.weight.normal_(0, 3.0)
    past = palette_frames((1, model.context_frames)).repeat(model.event_classes, 1, 1, 1, 1)
    codes = torch.zeros(model.event_classes, 1, dtype=torch.long)
    frames = model.predict(past, codes, torch.arange(model.event_classes))
    assert len({bytes(f.numpy()) for f in frames}) > 1               # the class reaches the decoder
    assert torch.equal(model.predict(past[:1], codes[:1]),              # no class given: the prior's most likely
                       model.predict(past[:1], codes[:1], model.event_prior(model.to_index(past[:1]), codes[:1]).argmax(-1)))
    index = model.to_index(past[:2])
    other = model.to_index(palette_frames((1, model.context_frames), seed=5))
    by_code = model.event_prior(index, torch.tensor([[0], [1]]))
    by_past = model.event_prior(torch.cat([index[:1], other]), torch.tensor([[0], [0]]))
    assert not torch.equal(by_code[0], by_code[1]) and not torch.equal(by_past[0], by_past[1])


def test_event_sampling_follows_temperature_and_the_generator():
    model = LatentActionModel(TINY)
    logits = torch.tensor([[0.0, 2.0, 1.0] + [-9.0] * (model.event_classes - 3)]).repeat(4000, 1)
    assert torch.equal(model.sample_event(logits, 0.0), torch.full((4000,), 1))
    draws = [model.sample_event(logits, 1.0, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])                             # a seed replays the draws
    share = torch.bincount(draws[0], minlength=3)[:3].float() / 4000
    expected = model.event_probs(logits[:1])[0, :3]
    assert torch.allclose(share, expected, atol=0.03)
    hot = model.sample_event(logits, 5.0, torch.Generator().manual_seed(7))
    assert torch.bincount(hot, minlength=3)[0] > torch.bincount(draws[0], minlength=3)[0]   # flatter


def test_the_prior_loss_does_not_reshape_the_action_code():
    """The prior learns from the posterior; its loss must reach neither the action encoder nor the posterior."""
    from common.latent_training import event_terms

    model = LatentActionModel(TINY).train()
    past, nxt = model.to_index(palette_frames((4, model.context_frames))), model.to_index(palette_frames((4,), seed=2))
    quantized, _, _ = model.encode_indices(past, nxt)
    _, rate, prior_kl, drawn, _ = event_terms(model, past, quantized)
    prior_kl.mean().backward(retain_graph=True)
    assert all(p.grad is None for p in [*model.encoder.parameters(), *model.to_code.parameters(),
                                        *model.event_encoder.parameters(), *model.to_event_logits.parameters()])
    assert all(p.grad is not None for p in model.prior_head.parameters())
    model.zero_grad()
    rate.mean().backward()
    assert all(p.grad is None for p in model.prior_head.parameters())
    assert model.to_event_logits.weight.grad is not None and drawn.shape == (4,)


def test_an_older_checkpoint_is_refused_naming_stage_3(tmp_path):
    from common.io import save_checkpoint

    old = LatentActionModel({**TINY, "event_classes": 0})
    config = {k: v for k, v in old.config.items() if k != "event_classes"}
    save_checkpoint(paths.latent_checkpoint(tmp_path, "best"), "latent_action", model=old.state_dict(),
                    config={**config, "event_code": False})
    with pytest.raises(UserError, match="re-run 03_train_latent_action.py"):
        load_latent_action_model(tmp_path)


def test_event_flags_are_checked_before_training(tmp_path):
    dirs = ["--data-dir", str(tmp_path / "nothing"), "--checkpoint-dir", str(tmp_path / "ck")]
    negative = run_script("03_train_latent_action.py", "--preset", "smoke", "--event-classes", "-1", *dirs)
    assert negative.returncode == 2 and "--event-classes" in negative.stderr and "Traceback" not in negative.stderr


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
    for patch in (4, 8, 16):
        assert torch.equal(fold_cells(index, patch), fold_cells(strided, patch))
    model = LatentActionModel(TINY)
    frames = index[:, 0, 7:217]
    assert torch.equal(model.unfold_pixels(model.fold_pixels(model.pad(frames[:, None])[:, 0])), frames)


def test_the_stem_sums_the_same_with_and_without_gradients_and_follows_its_weight():
    """PatchEmbedding takes its sum by bit-plane products in training and by a colour table at play; the
    two must agree, equal the 1x1 convolution its weight is stored as, and the table must follow a
    weight that an optimizer step changed."""
    torch.manual_seed(0)
    stem = PatchEmbedding(frames=3, patch=8, colours=9, width=16)
    index = torch.randint(0, 10, (2, 3, 224, 160), dtype=torch.uint8)
    cells = fold_cells(index, 8)
    optimizer = torch.optim.SGD(stem.parameters(), lr=0.1)
    for _ in range(2):
        bits = torch.stack([(index >> b) & 1 for b in range(4)], 1).float()          # (B, bit, T, H, W)
        channels = F.pixel_unshuffle(bits.flatten(1, 2), 8).view(2, 4, 3, 64, 28, 20).flatten(1, 3)
        as_conv = stem.proj(channels)                                                # the stored layout
        trained = stem(cells)
        with torch.no_grad():
            played = stem(cells)
        assert torch.allclose(trained, as_conv, atol=1e-4) and torch.allclose(played, as_conv, atol=1e-4)
        trained.square().mean().backward()
        optimizer.step()
    four = torch.randint(0, 10, (2, 4, 224, 160), dtype=torch.uint8)
    bits = torch.stack([(four >> b) & 1 for b in range(4)], 1).float()
    changes = F.pixel_unshuffle((bits[:, :, 1:] - bits[:, :, :-1]).flatten(1, 2), 8)
    with torch.no_grad():
        assert torch.allclose(stem(fold_cells(four, 8), differences=True), stem.proj(changes), atol=1e-4)


def test_the_drawn_frame_is_the_argmax_of_the_logits_with_the_copy_bonus():
    torch.manual_seed(0)
    model = LatentActionModel(TINY).eval()
    with torch.no_grad():
        model.head.bias.normal_(0, 4.0)      # many pixels change colour: both branches are exercised
    past = model.to_index(palette_frames((2, model.context_frames)))
    index, logits = model.predict_with_logits(past, torch.tensor([[1], [5]]), torch.tensor([0, 3]))
    pixels = logits.argmax(-2).to(torch.uint8)                      # (B, h, w, patch*patch), colour-major
    assert torch.equal(index, model.unfold_pixels(pixels))
    changed = index != past[:, -1]
    assert 0.05 < float(changed.float().mean()) < 0.95


def test_straight_through_gradient_reaches_encoder():
    model = LatentActionModel(TINY).train()
    past_rgb, nxt_rgb = palette_frames((4, model.context_frames)), palette_frames((4,), seed=2)
    past, nxt = model.to_index(past_rgb), model.to_index(nxt_rgb)
    model.encode_indices(past, nxt)                   # the first training pass places the codebook
    codebook = model.vq.codebook.clone()              # (each pass then moves it by EMA)
    quantized, codes, vq_loss = model.encode_indices(past, nxt)
    # the decoder sees exactly the codebook rows ...
    assert torch.allclose(quantized[:, 0], codebook[codes[:, 0]], atol=1e-5)
    logits = model.decode_logits(past, model.conditioning(quantized, torch.zeros(4, dtype=torch.long)))
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
    folder = paths.latent_dir(Path(smoke_latent))
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


def test_bf16_updates_follow_the_flag_and_on_auto_cuda_only():
    cpu = torch.device("cpu")
    assert use_bf16("bf16", cpu) and not use_bf16("fp32", cpu) and not use_bf16("auto", cpu)
    assert use_bf16("auto", torch.device("cuda")) and not use_bf16("auto", torch.device("mps"))


def test_resume_continues_from_latest(smoke_data, smoke_latent, tmp_path):
    root = tmp_path / "ck"
    shutil.copytree(smoke_latent, root)
    before = torch.load(paths.latent_checkpoint(root, "latest"), weights_only=True)["step"]
    result = run_script("03_train_latent_action.py", "--preset", "smoke", "--resume", "--data-dir", str(smoke_data),
                        "--checkpoint-dir", str(root), "--log-dir", str(tmp_path / "runs"),
                        "--time-budget", "5", "--max-steps", str(before + 3))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from step {before}" in result.stdout
    assert torch.load(paths.latent_checkpoint(root, "latest"), weights_only=True)["step"] == before + 3
    spent = run_script("03_train_latent_action.py", "--preset", "smoke", "--resume", "--data-dir", str(smoke_data),
                       "--checkpoint-dir", str(root), "--log-dir", str(tmp_path / "runs"),
                       "--time-budget", "5", "--max-steps", str(before + 3))
    assert spent.returncode == 2 and "spent its budget" in spent.stderr   # nothing rewritten with 0 updates
    other = tmp_path / "other_data"                                       # the same data set, one episode less
    shutil.copytree(smoke_data / "actions", other / "actions")
    shutil.copytree(smoke_data / "raw_gameplay", other / "raw_gameplay")
    level = next((other / "actions").glob("skill_level_*_actions.json"))
    doc = json.loads(level.read_text())
    shutil.rmtree(other / doc["episodes"].pop()["folder"])
    level.write_text(json.dumps(doc))
    moved = run_script("03_train_latent_action.py", "--preset", "smoke", "--resume", "--data-dir", str(other),
                       "--checkpoint-dir", str(root), "--log-dir", str(tmp_path / "runs"), "--max-steps", "999")
    assert moved.returncode == 2 and "another data set" in moved.stderr and "Traceback" not in moved.stderr
    saved = torch.load(paths.latent_checkpoint(root, "latest"), weights_only=True)
    del saved["config"]["event_norm"]                                     # as saved before the key existed
    torch.save(saved, paths.latent_checkpoint(root, "latest"))
    older = run_script("03_train_latent_action.py", "--preset", "smoke", "--resume", "--data-dir", str(smoke_data),
                       "--checkpoint-dir", str(root), "--log-dir", str(tmp_path / "runs"), "--max-steps", "999")
    assert older.returncode == 2 and "earlier version" in older.stderr and "--fresh" in older.stderr


def test_an_output_folder_that_cannot_be_written_stops_before_training(smoke_data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_script("03_train_latent_action.py", "--preset", "smoke", "--data-dir", str(smoke_data),
                        "--checkpoint-dir", str(blocker / "ck"), "--log-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "cannot write" in result.stderr and "Traceback" not in result.stderr


def test_a_trained_model_is_replaced_only_with_fresh(smoke_data, smoke_latent, tmp_path):
    """03 without --resume in a folder holding a trained model refuses before any work."""
    root = tmp_path / "ck"
    shutil.copytree(smoke_latent, root)
    best = paths.latent_checkpoint(root, "best")
    before = best.read_bytes()
    dirs = ["--data-dir", str(smoke_data), "--checkpoint-dir", str(root), "--log-dir", str(tmp_path / "runs")]
    refused = run_script("03_train_latent_action.py", "--preset", "smoke", *dirs)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "--fresh" in refused.stderr
    assert "Traceback" not in refused.stderr and best.read_bytes() == before
    both = run_script("03_train_latent_action.py", "--preset", "smoke", "--resume", "--fresh", *dirs)
    assert both.returncode == 2 and "one of --resume and --fresh" in both.stderr
    fresh = run_script("03_train_latent_action.py", "--preset", "smoke", "--fresh", "--max-steps", "3",
                       "--precision", "bf16", *dirs)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "bf16 updates" in fresh.stdout
    latest = torch.load(paths.latent_checkpoint(root, "latest"), weights_only=True)
    assert latest["step"] == 3
    weights = [t for t in latest["model"].values() if t.is_floating_point()]
    assert weights and all(t.dtype == torch.float32 for t in weights)   # bf16 updates keep float32 weights


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
    paths.latent_dir(tmp_path).mkdir()
    torch.save({"kind": "dqn", "format": 1}, paths.latent_checkpoint(tmp_path, "best"))
    with pytest.raises(UserError, match="latent_action"):
        load_latent_action_model(tmp_path)


def test_loss_weights_come_from_the_past_frames_only():
    """The extra weight sits near motion in the past frames, whatever the target frame is: a weight
    that follows the target's changes would reward drawing a change wherever one is possible."""
    from common.latent_training import loss_terms, motion_cells, moved_cells

    model = LatentActionModel(TINY)
    past = torch.zeros(1, model.context_frames, 210, 160, dtype=torch.uint8)
    past[0, -1, 100:104, 50:52] = 2          # a ball appears in the newest past frame
    near = motion_cells(model, moved_cells(fold_cells(model.pad(past), model.patch)))
    top = model.pad_h // 2
    cell = ((100 + top) // model.patch, 50 // model.patch)
    assert near[0, cell[0], cell[1]] and near[0, cell[0] + 1, cell[1] + 1]   # its cell and the next ones
    assert int(near.sum()) <= 3 * 3 * 2 and not near[0, 0, 0]                 # and nothing far away
    weights = []
    for target_row in (60, 150):  # two different next frames: the ball far up or far down
        nxt = torch.zeros(1, 210, 160, dtype=torch.uint8)
        nxt[0, target_row:target_row + 4, 50:52] = 2
        weights.append(loss_terms(model, past, nxt, motion_weight=20.0, keep_static=1.0)[3][3])
    assert torch.equal(weights[0], weights[1])
    assert set(weights[0].unique().tolist()) == {0.0, 1.0, 21.0}   # padding, elsewhere, near the motion


def test_the_serve_weight_marks_the_serve_rows_while_no_ball_moves_there_whatever_comes_next():
    """--serve-weight weighs the cells between the bricks and the paddle while the past frames show no
    motion there, the same whether or not the next frame serves a ball; a ball in play lifts it."""
    from common.latent_training import SERVE_ZONE, loss_terms, moved_cells, waiting_cells

    model = LatentActionModel(TINY)
    top = model.pad_h // 2
    waiting_past = torch.zeros(1, model.context_frames, 210, 160, dtype=torch.uint8)
    cells = waiting_cells(model, moved_cells(fold_cells(model.pad(waiting_past), model.patch)))[0]
    rows = cells.any(1).nonzero()[:, 0] * model.patch - top   # each marked cell row's first original row
    assert cells.any(1).sum() >= 5 and bool(cells[cells.any(1)].all())   # whole rows, several of them
    assert int(rows.min()) >= SERVE_ZONE[0] and int(rows.max()) + model.patch <= SERVE_ZONE[1]
    weights = []
    for serve in (False, True):   # the next frame: still no ball, or a ball served at x 80
        nxt = torch.zeros(1, 210, 160, dtype=torch.uint8)
        if serve:
            nxt[0, 136:140, 80:82] = 2
        weights.append(loss_terms(model, waiting_past, nxt, motion_weight=20.0, keep_static=1.0,
                                  serve_weight=10.0)[3][3])
    assert torch.equal(weights[0], weights[1]) and 11.0 in weights[0].unique().tolist()

    in_play = waiting_past.clone()
    in_play[0, -1, 140:144, 60:62] = 2        # a ball moving through the serve rows
    assert not waiting_cells(model, moved_cells(fold_cells(model.pad(in_play), model.patch))).any()
