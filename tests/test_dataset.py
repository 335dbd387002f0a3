"""common/dataset.py: verification catches each kind of damage; loading, fingerprints and errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from common import dataset as ds, paths
from common.errors import UserError
from tests.conftest import run_script


@pytest.fixture
def data_copy(smoke_data, tmp_path):
    """A private copy of the smoke recording that a test may damage."""
    target = tmp_path / "data"
    shutil.copytree(smoke_data, target)
    return target


def edit_level_json(data_dir, change) -> None:
    path = paths.actions_path(data_dir, 0)
    doc = json.loads(path.read_text())
    change(doc["episodes"][0])
    path.write_text(json.dumps(doc))


def test_verify_catches_a_truncated_png_in_fast_and_decode_mode(data_copy):
    episode = ds.load_episodes(data_copy)[0]
    path = episode.frame_path(7)
    path.write_bytes(path.read_bytes()[:300])
    for decode in (False, True):
        problems = ds.verify_dataset(data_copy, decode=decode)
        assert len(problems) == 1 and "frame_00007.png" in problems[0], problems
    with pytest.raises(UserError, match="02_record_videos.py"):
        ds.require_dataset(data_copy)
    with pytest.raises(UserError, match="unreadable"):
        ds.read_frames(episode, 5, 10)


def test_verify_catches_missing_frames_length_mismatch_and_bad_split(data_copy):
    ds.load_episodes(data_copy)[1].frame_path(60).unlink()
    edit_level_json(data_copy, lambda record: (record["actions"].pop(), record.update(split="holdout")))
    problems = ds.verify_dataset(data_copy, decode=False)
    assert any("missing frame" in p and "frame_00060.png" in p for p in problems), problems
    assert any("59 actions for 61 frames" in p for p in problems), problems
    assert any("unknown split 'holdout'" in p for p in problems), problems
    assert len(problems) == 3


def test_verify_cli_lists_problems_and_exits_non_zero(data_copy):
    clean = run_script("02_record_videos.py", "--verify", "--data-dir", str(data_copy))
    assert clean.returncode == 0 and "ok: 4 episodes, 244 frames" in clean.stdout
    edit_level_json(data_copy, lambda record: record["lives"].pop())
    broken = run_script("02_record_videos.py", "--verify", "--data-dir", str(data_copy))
    assert broken.returncode == 2 and "60 lives entries for 61 frames" in broken.stdout
    assert "Traceback" not in broken.stderr


def test_missing_data_names_the_stage_to_run(tmp_path):
    with pytest.raises(UserError, match="run 02_record_videos.py first"):
        ds.load_episodes(tmp_path)
    with pytest.raises(UserError, match="02_record_videos.py"):
        ds.require_dataset(tmp_path)
    paths.actions_path(tmp_path, 0).parent.mkdir(parents=True)
    paths.actions_path(tmp_path, 0).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        ds.load_episodes(tmp_path)


def test_split_filter_and_fingerprint(data_copy):
    everything = ds.require_dataset(data_copy)
    held_out = ds.load_episodes(data_copy, splits=("val", "test"))
    assert {e.split for e in held_out} == {"val", "test"} and len(held_out) == 2 and len(everything) == 4
    before = ds.dataset_fingerprint(data_copy)
    assert ds.dataset_fingerprint(data_copy) == before
    folder = everything[0].folder  # an episode folder re-written with the same JSON
    shutil.copytree(folder, folder.with_name("copy"))
    shutil.rmtree(folder)
    folder.with_name("copy").rename(folder)
    after_rewrite = ds.dataset_fingerprint(data_copy)
    assert after_rewrite != before
    edit_level_json(data_copy, lambda record: record.update(score=99.0))
    assert ds.dataset_fingerprint(data_copy) != after_rewrite


def test_unlisted_episode_is_a_problem_unless_a_recording_is_running(data_copy):
    episode = ds.load_episodes(data_copy)[0]
    shutil.copytree(episode.folder, episode.folder.with_name("episode_950"))
    assert any("episode_950" in p for p in ds.verify_dataset(data_copy, decode=False))
    paths.lock_path(data_copy).write_text(str(os.getpid()))  # a live recording renames before it lists
    assert ds.verify_dataset(data_copy, decode=False) == []
    result = run_script("02_record_videos.py", "--policy", "random", "--preset", "smoke", "--data-dir", str(data_copy))
    assert result.returncode == 2 and "another recording" in result.stderr
    # the later stages do not train on a set that another process is still recording
    recorder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        paths.lock_path(data_copy).write_text(str(recorder.pid))
        with pytest.raises(UserError, match="still writing"):
            ds.require_dataset(data_copy)
        result = run_script("03_train_latent_action.py", "--preset", "smoke", "--data-dir", str(data_copy),
                            "--checkpoint-dir", str(data_copy / "ck"))
        assert result.returncode == 2 and "still writing" in result.stderr and "Traceback" not in result.stderr
    finally:
        recorder.kill()
        recorder.wait()


def test_atomic_writes_respect_the_umask(tmp_path):
    """Files written through the atomic writer get the permissions a plain open() would give them."""
    import os

    from common.io import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write_json(tmp_path / "b.json", {"x": 1})
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
