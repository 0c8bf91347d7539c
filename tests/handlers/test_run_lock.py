"""A second run into the same checkpoint folder refuses instead of mixing checkpoints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cggm_seg.handlers.run_lock import RunLock

ROOT = Path(__file__).resolve().parents[2]


def _write_lock(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "2026-12-01 10:00:00"}
    (folder / "run.lock").write_text(json.dumps(holder))


def test_lock_is_taken_released_and_reentrant(tmp_path):
    lock = RunLock(tmp_path / "models")
    lock.acquire()
    assert json.loads((tmp_path / "models" / "run.lock").read_text())["pid"] == os.getpid()
    RunLock(tmp_path / "models").acquire()  # the same process may take it again
    lock.release()
    assert not (tmp_path / "models" / "run.lock").exists()


def test_a_live_holder_refuses_the_run(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, other.pid)
        with pytest.raises(
            RuntimeError, match=rf"another run \(process {other.pid}, started 2026-12-01 10:00:00\)"
        ):
            RunLock(tmp_path).acquire()
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == other.pid  # left alone
    finally:
        other.kill()
        other.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, dead.pid)
    lock = RunLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    assert f"left by process {dead.pid} that no longer runs" in caplog.text
    lock.release()


def test_a_lock_of_another_host_is_not_taken_over(tmp_path):
    _write_lock(tmp_path, 12345, host="elsewhere")
    with pytest.raises(RuntimeError, match="held by process 12345 on host 'elsewhere'"):
        RunLock(tmp_path).acquire()


@pytest.mark.slow
def test_a_second_bundle_run_into_the_same_folder_refuses(tmp_path):
    config = str(ROOT / "bundles" / "multiview_cggm.json")
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        config,
        "--bundle_root",
        str(tmp_path),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([*command, "--epochs", "500"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        lock = tmp_path / "runs" / "multiview_digits_joint_robust" / "models" / "run.lock"
        deadline = time.monotonic() + 300
        while not lock.exists() and time.monotonic() < deadline:
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.5)
        assert lock.exists()
        second = subprocess.run([*command, "--epochs", "1"], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert second.returncode != 0
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(f"cggm_seg: the run stopped: RuntimeError: another run (process {first.pid}")
        assert "would mix their checkpoints" in last
        assert first.poll() is None  # the first run is untouched
    finally:
        first.kill()
        first.wait()
