"""Shared fixtures: small real artifacts made once per test session by running the stage scripts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from common import paths

REPO = Path(__file__).resolve().parent.parent


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a numbered script from the repo root with this interpreter; output captured as text."""
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def private_data_dir(smoke_data: Path, data: Path) -> Path:
    """A data dir at `data` that later stages may write into: a copy of smoke_data's actions/ with its
    frames linked, not copied (04 writes its pairs into actions/)."""
    import shutil

    data.mkdir(parents=True)
    shutil.copytree(smoke_data / "actions", data / "actions")
    (data / "raw_gameplay").symlink_to(smoke_data / "raw_gameplay", target_is_directory=True)
    return data


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """A smoke recording of random play (4 episodes of 61 frames, all three splits), made once."""
    data_dir = tmp_path_factory.mktemp("smoke_data")
    result = run_script("02_record_videos.py", "--policy", "random", "--preset", "smoke", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return data_dir


@pytest.fixture(scope="session")
def smoke_action_to_latent(smoke_data, smoke_latent, tmp_path_factory) -> Path:
    """A checkpoint root with the smoke latent model and a smoke action->latent map (04, then 05 --preset smoke).

    04 writes its pairs into the data dir, so both run on a private data dir, `root.parent / "data"`:
    a copy of smoke_data's actions/ with its frames linked, not copied. The root links smoke_latent's files.
    """
    work = tmp_path_factory.mktemp("smoke_action_to_latent")
    data, root = private_data_dir(smoke_data, work / "data"), work / "checkpoints"
    paths.latent_dir(root).mkdir(parents=True)
    for path in paths.latent_dir(Path(smoke_latent)).iterdir():
        (root / "latent_action" / path.name).symlink_to(path)
    dirs = ["--data-dir", str(data), "--checkpoint-dir", str(root)]
    result = run_script("04_collect_action_latent_pairs.py", *dirs)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script("05_train_action_to_latent.py", "--preset", "smoke", *dirs)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture(scope="session")
def smoke_latent(smoke_data, tmp_path_factory) -> Path:
    """A checkpoint root holding latent_action/{best,latest}.pt and metrics.json from 03 --preset smoke."""
    root = tmp_path_factory.mktemp("smoke_latent")
    result = run_script("03_train_latent_action.py", "--preset", "smoke", "--data-dir", str(smoke_data),
                        "--checkpoint-dir", str(root), "--log-dir", str(root / "runs"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root
