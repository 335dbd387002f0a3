"""The whole chain, end to end: run_pipeline.py --preset smoke runs all six stages in tmp dirs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image
from common import paths

REPO = Path(__file__).resolve().parent.parent


def test_smoke_pipeline_runs_every_stage_and_reports(tmp_path: Path) -> None:
    data, ckpt, logs = tmp_path / "data", tmp_path / "checkpoints", tmp_path / "runs"
    result = subprocess.run([sys.executable, "run_pipeline.py", "--preset", "smoke", "--data-dir", str(data),
                             "--checkpoint-dir", str(ckpt), "--log-dir", str(logs)],
                            cwd=REPO, capture_output=True, text=True, timeout=480)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    summary = json.loads((data / "pipeline_summary.json").read_text())
    assert [name[:2] for name in summary["stage_seconds"]] == ["01", "02", "03", "04", "05", "06", "06"]
    assert paths.dqn_checkpoint(ckpt, "skill_level_0").exists()
    assert summary["recording"]["total_frames"] > 0
    assert 0.0 <= summary["control"]["paddle_within_3px"] <= 1.0
    assert 0.0 <= summary["action_to_latent"]["test_transition_accuracy"] <= 1.0
    assert summary["world_model"]["one_step"]
    # the smoke agent reaches no threshold, so its best network is recorded as played level 1 beside random play,
    # and both stages that measure the world model report each level
    recorded = json.loads(paths.summary_path(data).read_text())["levels"]
    assert set(recorded) == {"0", "1"} and recorded["1"]["policy"] == "dqn" and recorded["1"]["splits"]["test"] >= 1
    levels = {"skill_level_0", "skill_level_1"}
    assert set(json.loads(paths.latent_metrics_path(ckpt).read_text())["by_level"]) == levels
    control = json.loads(paths.control_metrics_path(ckpt).read_text())
    assert set(control["details"]["action_to_latent"]["by_level"]) == levels
    with Image.open(data / "neural_random_game.gif") as gif:
        assert gif.n_frames >= 60
    assert "pipeline summary" in result.stdout
    page = (logs / "report" / "results.md").read_text()   # one page generated from the metrics, with plots
    for section in ("Stage 1", "Stage 2", "Stage 3", "Stage 5", "Stage 6", "skill_level_1"):
        assert section in page, section
    for plot in ("agent_evaluation.png", "latent_training.png", "action_confusion.png", "control_by_step.png"):
        assert (logs / "report" / plot).stat().st_size > 1000, plot

    # run again: every training stage is complete and current, so it is kept, not retrained
    trained = (paths.dqn_checkpoint(ckpt, "latest"), paths.latent_checkpoint(ckpt, "best"),
               paths.action_to_latent_checkpoint(ckpt))
    stamps = {p: p.stat().st_mtime_ns for p in trained}
    again = subprocess.run([sys.executable, "run_pipeline.py", "--preset", "smoke", "--data-dir", str(data),
                            "--checkpoint-dir", str(ckpt), "--log-dir", str(logs)],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert again.stdout.count(": kept ") == 5 and "FRESH=1" in again.stdout
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    kept = json.loads((data / "pipeline_summary.json").read_text())
    assert [name[:2] for name in kept["stage_seconds"]] == ["06", "06"]


def test_stage_3_uses_every_core_by_default_and_one_in_smoke() -> None:
    """One clear default, whatever else the machine is doing: all cores, and 1 thread for the smoke preset."""
    import importlib
    import os

    sys.path.insert(0, str(REPO))
    script = importlib.import_module("03_train_latent_action")
    quick = _parsed(script, "--preset", "quick")
    assert quick.threads is None and script.set_threads(quick.threads) == os.cpu_count()
    assert _parsed(script, "--preset", "smoke").threads == 1
    assert _parsed(script, "--preset", "quick", "--threads", "1").threads == 1


def _parsed(script, *argv: str):
    old = sys.argv
    sys.argv = ["03_train_latent_action.py", *argv]
    try:
        return script.parse_args()
    finally:
        sys.argv = old


def test_the_pipeline_plans_keep_resume_and_fresh(tmp_path: Path) -> None:
    """What a second run does with each stage's result: kept when current, resumed when interrupted,
    retrained with --fresh when asked or when an earlier stage ran again."""
    import os

    sys.path.insert(0, str(REPO))
    from run_pipeline import plan_stage

    data, ckpt = tmp_path / "data", tmp_path / "ck"
    stage_3 = "03 train latent actions + world model"
    pairs = paths.summary_path(data)
    latest = paths.latent_checkpoint(ckpt, "latest")
    for path in (pairs, latest):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert plan_stage(stage_3, data, ckpt, False, False, pairs) == ("run", ["--resume"])     # interrupted
    metrics = paths.latent_metrics_path(ckpt)
    metrics.write_text("x")
    os.utime(pairs, (1, 1))
    assert plan_stage(stage_3, data, ckpt, False, False, pairs) == ("keep", [])              # complete, current
    assert plan_stage(stage_3, data, ckpt, True, False, pairs) == ("run", ["--fresh"])       # FRESH=1
    assert plan_stage(stage_3, data, ckpt, False, True, pairs) == ("run", ["--fresh"])       # upstream ran
    os.utime(metrics, (0, 0))
    assert plan_stage(stage_3, data, ckpt, False, False, pairs) == ("run", ["--fresh"])      # older than its data
    assert plan_stage("06 evaluate control", data, ckpt, False, False, metrics) == ("run", [])
    stage_2 = "02 record videos"   # a recording of another agent's levels is replaced, not topped up
    assert plan_stage(stage_2, data, ckpt, False, False, None) == ("keep", [])
    assert plan_stage(stage_2, data, ckpt, False, True, None) == ("run", ["--replace"])
    assert plan_stage(stage_2, data, ckpt, True, False, None) == ("run", ["--replace"])


def test_nproc_launches_the_world_model_under_torchrun_and_nothing_else() -> None:
    sys.path.insert(0, str(REPO))
    from run_pipeline import launch, stage_commands

    for name, argv in stage_commands("quick", "data", "ck", "runs"):
        one, two = launch(argv, 1), launch(argv, 2)
        assert one == [sys.executable, *argv]
        if name.startswith("03"):
            assert two[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc-per-node" in two
            assert two[two.index("--nproc-per-node") + 1] == "2" and two[-len(argv):] == argv
        else:
            assert two == one


def test_the_pipeline_seed_reaches_every_stage_that_draws_random_numbers() -> None:
    sys.path.insert(0, str(REPO))
    from run_pipeline import stage_commands

    for name, argv in stage_commands("quick", "data", "ck", "runs", seed=3):
        if name.startswith("04"):   # replays the recorded episodes: nothing random
            assert "--seed" not in argv
        else:
            assert argv[argv.index("--seed") + 1] == "3", name
