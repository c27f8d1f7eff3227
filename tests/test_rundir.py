"""The run-directory lock (held by a real second process, and gone when that process is SIGKILLed), atomic
writes (a full disk, other failures) and the removal of temporary files left by a killed write."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from ltcls import io as ltcls_io
from ltcls.io import DiskFullError, atomic_write, atomic_write_text
from ltcls.rundir import NotFinishedError, RunDir, RunDirBusy, RunDirError, RunDirLock

# ltcls.rundir is torch-free: the holder imports it in a fraction of a second.
HOLDER = """
import sys
from ltcls import rundir
with rundir.RunDirLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # hold until the test closes stdin (or kills this process)
print("released", flush=True)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    """A second process that takes the lock on ``run_dir`` and holds it until its stdin is closed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line == "locked\n", proc.stderr.read()
    return proc


def test_second_process_is_refused_with_directory_and_pid_then_lock_is_released(tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    try:
        assert RunDirLock.holder(run_dir) == holder.pid
        with pytest.raises(RunDirBusy) as info:
            RunDirLock(run_dir).acquire()
        assert str(info.value) == (f"run directory '{run_dir}' is in use by another ltcls process (PID {holder.pid}); "
                                   "wait for it to finish or stop it, or choose another --work-dir")
        assert info.value.pid == holder.pid
    finally:
        out, _ = holder.communicate("", timeout=60)  # closing stdin ends the holder's with-block
    assert holder.returncode == 0 and out == "released\n"
    assert RunDirLock.holder(run_dir) is None
    with RunDirLock(run_dir) as lock:
        assert lock.locked and (run_dir / ".lock").read_text() == f"{os.getpid()}\n"
    assert not lock.locked and (run_dir / ".lock").read_text() == ""


def test_sigkilled_holder_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    holder.stdin.close()
    holder.stdout.close()
    holder.stderr.close()
    assert holder.returncode == -signal.SIGKILL
    assert (run_dir / ".lock").read_text() == f"{holder.pid}\n"  # the file stays, with the dead PID ...
    assert RunDirLock.holder(run_dir) is None  # ... but nobody holds the lock
    with RunDirLock(run_dir):
        assert RunDirLock.holder(run_dir) == os.getpid()


def test_same_process_second_lock_is_refused_and_released_on_error(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        with RunDirLock(run_dir):
            with pytest.raises(RunDirBusy, match=f"PID {os.getpid()}"):
                RunDirLock(run_dir).acquire()
            raise ZeroDivisionError
    RunDirLock(run_dir).acquire().release()  # the exception released it


def test_unusable_run_directory_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match=re.escape(f"cannot use run directory '{tmp_path / 'file' / 'run'}': ")
                       + "Not a directory"):
        RunDirLock(tmp_path / "file" / "run").acquire()


def test_atomic_write_text_replaces_whole_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second ü\n")
    assert path.read_text(encoding="utf-8") == "second ü\n" and sorted(os.listdir(tmp_path)) == ["metrics.json"]


def _partial_then(err: BaseException):
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half a fi")
        raise err
    return write


def test_atomic_write_disk_full_removes_partial_file_and_keeps_previous(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("previous\n")
    with pytest.raises(DiskFullError) as info:
        atomic_write(path, _partial_then(OSError(errno.ENOSPC, "No space left on device")))
    assert str(info.value) == (f"no space left on device while writing {path} (the partial file was removed; the "
                               "previous config.yaml, if any, is kept)")
    assert info.value.errno == errno.ENOSPC
    assert path.read_text() == "previous\n" and sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_atomic_write_errno_less_failure_is_disk_full_only_when_space_is_gone(tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as ``RuntimeError ... unexpected pos`` (no errno): the free space
    decides."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(ltcls_io.shutil, "disk_usage", lambda folder: Usage(10 << 30, 10 << 30, 12 << 10))
    with pytest.raises(DiskFullError, match="no space left on device while writing"):
        atomic_write(path, _partial_then(torch_error))
    monkeypatch.setattr(ltcls_io.shutil, "disk_usage", lambda folder: Usage(10 << 30, 1 << 30, 9 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos") as info:
        atomic_write(path, _partial_then(torch_error))
    assert not isinstance(info.value, DiskFullError)
    monkeypatch.setattr(ltcls_io.shutil, "disk_usage", lambda folder: Usage(10 << 30, 10 << 30, 0))
    with pytest.raises(TypeError, match="cannot pickle"):  # not an I/O failure: never called disk full
        atomic_write(path, _partial_then(TypeError("cannot pickle 'generator' object")))
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, _partial_then(KeyboardInterrupt()))
    assert path.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


def test_remove_stale_temps_logs_each(tmp_path, caplog):
    (tmp_path / "stage2").mkdir()
    for name in ("checkpoint.pt.tmp", "config.yaml.tmp", "stage2/checkpoint.pt.tmp", "checkpoint.pt", "train.log"):
        (tmp_path / name).write_text("x")
    with caplog.at_level(logging.WARNING, logger="ltcls"):
        removed = RunDir(tmp_path).remove_stale_temps()
    expected = [tmp_path / n for n in ("checkpoint.pt.tmp", "config.yaml.tmp", "stage2/checkpoint.pt.tmp")]
    assert removed == expected
    assert caplog.messages == [f"removed {p}, left by an interrupted write" for p in expected]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "stage2", "train.log"]
    assert os.listdir(tmp_path / "stage2") == []


def test_run_dir_names_its_files_and_knows_a_finished_run(tmp_path):
    rd = RunDir(tmp_path / "run")
    with pytest.raises(NotFinishedError, match=f"no run directory '{rd.path}'"):
        rd.require_finished()
    rd.path.mkdir()
    assert not rd.holds_run() and not rd.is_finished()
    rd.config_path.write_text("data: {}\n")
    rd.checkpoint_path.write_bytes(b"x")
    assert rd.holds_run() and rd.missing() == "metrics.json"
    with pytest.raises(NotFinishedError, match=r"is not a finished stage-1 run: metrics.json is missing \(has the run "
                                               r"finished\?\)$"):
        rd.require_finished("stage-1 run")
    with pytest.raises(RunDirError, match="already holds a run \\(checkpoint.pt\\); pass --resume"):
        rd.refuse_existing()
    rd.write_metrics({"overall": 1.0})
    assert rd.is_finished() and rd.metrics() == {"overall": 1.0}
    assert rd.stage2("crt").path == rd.path / "stage2_crt" and rd.eval_dir("test") == rd.path / "eval_test"


def test_run_dir_owns_its_files_and_nothing_else(tmp_path):
    rd = RunDir(tmp_path / "run")
    for owned in ("", "checkpoint.pt", "config.yaml", "metrics.json", "train.log", "tb", "tb/events.out",
                  "feature_cache/train_views1.pt", "comparison.md", ".lock"):
        assert rd.owns(rd.path / owned), owned
    for other in ("eval_test/metrics.json", "model.pt2", "stage2_crt/export.onnx"):
        assert not rd.owns(rd.path / other), other
    assert not rd.owns(tmp_path / "checkpoint.pt")
