"""The whole chain, end to end: run_pipeline.py --preset smoke runs all six stages in tmp dirs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def test_smoke_pipeline_runs_every_stage_and_reports(tmp_path: Path) -> None:
    data, ckpt, logs = tmp_path / "data", tmp_path / "checkpoints", tmp_path / "runs"
    result = subprocess.run([sys.executable, "run_pipeline.py", "--preset", "smoke", "--data-dir", str(data),
                             "--checkpoint-dir", str(ckpt), "--log-dir", str(logs)],
                            cwd=REPO, capture_output=True, text=True, timeout=480)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    summary = json.loads((data / "pipeline_summary.json").read_text())
    assert [name[:2] for name in summary["stage_seconds"]] == ["01", "02", "03", "04", "05", "06", "06"]
    assert (ckpt / "dqn" / "skill_level_0.pt").exists()
    assert summary["recording"]["total_frames"] > 0
    assert 0.0 <= summary["control"]["paddle_within_3px"] <= 1.0
    assert 0.0 <= summary["action_to_latent"]["test_transition_accuracy"] <= 1.0
    assert summary["world_model"]["one_step"]
    with Image.open(data / "neural_random_game.gif") as gif:
        assert gif.n_frames >= 60
    assert "pipeline summary" in result.stdout


def test_the_pipeline_gives_stage_3_every_core_except_in_smoke() -> None:
    """Stage 3's own load check would see the pipeline's just-finished stage 2 and pick one thread."""
    import os

    sys.path.insert(0, str(REPO))
    from run_pipeline import stage_commands

    quick = dict(stage_commands("quick", "d", "c", "r"))["03 train latent actions + world model"]
    assert quick[quick.index("--threads") + 1] == str(os.cpu_count())
    smoke = dict(stage_commands("smoke", "d", "c", "r"))["03 train latent actions + world model"]
    assert "--threads" not in smoke
