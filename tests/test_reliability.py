"""Issue 12 through the command: one-line user errors (exit 2) checked before training, the run-directory lock
between two real processes, resume that trusts the checkpoint, SIGINT / SIGTERM sent to a real run and resumed
to the same final metrics, disk full, non-finite loss, TensorBoard after a resume."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ltcls import io as ltcls_io
from ltcls.cli import train_main
from ltcls.engine import checkpoint as checkpoint_mod
from ltcls.rundir import RunDirLock

ROOT = Path(__file__).parents[1]
# The tiny digits recipe of tests/test_train_e2e.py: ResNet-8 on 16x16 digits, 12 steps an epoch.
TINY = ["model.name=cifar_resnet8", "data.img_size=16", "train.batch_size=32", "train.num_workers=0",
        "train.log_interval=2", "eval.interval=2"]
Usage = namedtuple("Usage", "total used free")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0", "LTCLS_DEBUG": ""}


def _cfg(tmp_path: Path, epochs: int) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "digits_lt_ce.yaml").read_text())
    cfg["train"]["epochs"] = epochs
    path = tmp_path / "digits_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ltcls.cli", "train", *args]


def _run(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env or ENV, cwd=ROOT)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The command's last stderr line, after checking that it is the only error output (no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ltcls-train:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------------- one-line user errors


@pytest.mark.parametrize("override, names", [("train.epochs=-3", "train.epochs"),
                                             ("data.img_size=-5", "data.img_size")])
def test_value_out_of_range_is_one_line_before_anything_is_written(tmp_path, override, names):
    run = tmp_path / "run"
    proc = _run("--config", str(_cfg(tmp_path, 1)), "--work-dir", str(run), "--set", *TINY, override)
    assert proc.returncode == 2
    line = _error_line(proc)
    assert line.startswith("ltcls-train: error: ") and names in line
    assert not run.exists()


@pytest.mark.parametrize("override, names", [
    ("train.batch_size=0", "train.batch_size"), ("train.lr=-0.1", "train.lr"), ("train.seed=-1", "train.seed"),
    ("eval.few_threshold=500", "eval.few_threshold"), ("model.drop_rate=1.5", "model.drop_rate"),
    ("train.device=gpu", "train.device"), ("train.clip_grad_norm=0", "train.clip_grad_norm"),
])
def test_more_values_out_of_range_in_process(tmp_path, capsys, override, names):
    with pytest.raises(SystemExit) as info:
        train_main(["--config", str(_cfg(tmp_path, 1)), "--work-dir", str(tmp_path / "run"), "--set", override])
    err = capsys.readouterr().err
    assert info.value.code == 2 and names in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    args = ("--config", str(_cfg(tmp_path, 1)), "--work-dir", str(tmp_path / "run"), "--set", "train.epochs=0")
    for env in ({**ENV, "LTCLS_DEBUG": "1"}, ENV):
        proc = _run(*args, *(() if env is not ENV else ("--debug",)), env=env)
        assert proc.returncode != 0 and "Traceback" in proc.stderr and "train.epochs" in proc.stderr


def _image_dataset(tmp_path: Path, bad_test_image: bool) -> list[str]:
    """A split_file dataset of 8x8 PNGs (2 classes); optionally one test 'image' that is not an image."""
    root = tmp_path / "images"
    root.mkdir()
    lines = {"train": [], "test": []}
    for split, n in (("train", 6), ("test", 2)):
        for i in range(n):
            name = f"{split}_{i}.png"
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / name)
            lines[split].append(f"{name} {i % 2}")
    if bad_test_image:
        (root / "test_1.png").write_bytes(b"not an image at all")
    for split, entries in lines.items():
        (tmp_path / f"{split}.txt").write_text("\n".join(entries) + "\n")
    return ["data.name=split_file", f"data.root={root}", f"data.train_split={tmp_path / 'train.txt'}",
            f"data.test_split={tmp_path / 'test.txt'}"]


@pytest.mark.slow
def test_start_up_errors_are_one_line_and_found_before_training(tmp_path):
    """Each error found after the yaml is read: exit 2, one line naming the key / file / directory, and no run
    directory (nothing was trained)."""
    cfg = str(_cfg(tmp_path, 1))
    (tmp_path / "a_file").write_text("x")
    bad_split = tmp_path / "bad_split.txt"
    bad_split.write_text("img.png not_a_label\n")
    cases = [
        (["--set", *TINY, "model.name=no_such_net"], "no_such_net"),
        (["--set", *TINY, "eval.split=val"], "eval.split"),
        (["--set", *TINY, *_image_dataset(tmp_path, bad_test_image=True)], "test_1.png"),
        (["--set", *TINY, "data.name=split_file", f"data.root={tmp_path}", f"data.train_split={bad_split}",
          f"data.test_split={bad_split}"], f"{bad_split} line 1"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--set", *TINY, "train.device=cuda"], "train.device"))
    for k, (args, names) in enumerate(cases):
        run = tmp_path / f"run{k}"
        proc = _run("--config", cfg, "--work-dir", str(run), *args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert names in _error_line(proc)
        assert not run.exists()
    in_the_way = tmp_path / "a_file" / "run"
    proc = _run("--config", cfg, "--work-dir", str(in_the_way), "--set", *TINY)
    assert proc.returncode == 2 and str(tmp_path / "a_file") in _error_line(proc)


def test_resume_and_stage2_errors_are_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((ROOT / "configs" / "digits_lt_ce.yaml").read_text())
    (run / "checkpoint.pt").write_bytes(b"")
    proc = _run("--work-dir", str(run), "--resume")
    assert proc.returncode == 2
    line = _error_line(proc)
    assert str(run / "checkpoint.pt") in line and "empty" in line
    (run / "checkpoint.pt").unlink()
    proc = _run("--stage2", "crt", "--from", str(run))  # a run that never finished
    assert proc.returncode == 2 and "not a finished stage-1 run" in _error_line(proc) and str(run) in _error_line(proc)


# ---------------------------------------------------------------------------------- runs, signals, resume


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _steps(run: Path, tag: str) -> list[int]:
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted 3-epoch run (the config file and the run directory)."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = _cfg(tmp, 3)
    proc = _run("--config", str(cfg), "--work-dir", str(tmp / "run"), "--set", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, tmp / "run"


def _interrupt_and_resume(reference, tmp_path, sig: int, extra: list[str]) -> tuple[Path, str]:
    cfg, _ = reference
    run = tmp_path / "run"
    log_file = tmp_path / "stderr.txt"
    with open(log_file, "w") as err:
        proc = subprocess.Popen(_cmd("--config", str(cfg), "--work-dir", str(run), "--set", *TINY, *extra),
                                stdout=subprocess.DEVNULL, stderr=err, env=ENV, cwd=ROOT)
        try:
            _wait_for(lambda: (run / "checkpoint.pt").exists(), proc)  # epoch 1 done: now inside epoch 2
            proc.send_signal(sig)
            assert proc.wait(timeout=120) == 128 + sig
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = log_file.read_text()
    assert "Traceback" not in stderr, stderr[-3000:]
    line = [ln for ln in stderr.splitlines() if ln.startswith("ltcls-train:")]
    assert len(line) == 1 and signal.Signals(sig).name in line[0] and str(run / "checkpoint.pt") in line[0]
    command = line[0].split("resume with: ", 1)[1]
    assert not (run / "metrics.json").exists() and not list(run.glob("*.tmp"))
    argv = shlex.split(command)
    assert argv[0] == "ltcls-train"
    proc = _run(*argv[1:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, line[0]


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resume_matches_uninterrupted(reference, tmp_path):
    run, line = _interrupt_and_resume(reference, tmp_path, signal.SIGTERM, [])
    assert "epoch 1," in line  # without checkpoint_on_signal the last checkpoint is the end of epoch 1
    a, b = _metrics(reference[1]), _metrics(run)
    assert a["per_class"] == b["per_class"] and a["overall"] == b["overall"]
    # TensorBoard: the steps of epoch 2 that ran twice are drawn once (purge_step), as in the reference
    assert _steps(run, "train/loss") == _steps(reference[1], "train/loss")
    assert _steps(run, "acc/overall") == _steps(reference[1], "acc/overall")


@pytest.mark.slow
def test_sigint_with_checkpoint_on_signal_resumes_mid_epoch_exactly(reference, tmp_path):
    run, line = _interrupt_and_resume(reference, tmp_path, signal.SIGINT, ["train.checkpoint_on_signal=true"])
    assert "batch" in line  # the interrupt checkpoint lies inside epoch 2
    a, b = _metrics(reference[1]), _metrics(run)
    assert a["per_class"] == b["per_class"] and a["overall"] == b["overall"]
    wa = torch.load(reference[1] / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    assert _steps(run, "train/loss") == _steps(reference[1], "train/loss")


@pytest.mark.slow
def test_second_process_into_a_running_run_directory_is_refused(reference, tmp_path):
    cfg, _ = reference
    run = tmp_path / "run"
    first = subprocess.Popen(_cmd("--config", str(cfg), "--work-dir", str(run), "--set", *TINY, "train.epochs=100"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    try:
        _wait_for(lambda: RunDirLock.holder(run) is not None, first)
        for args in (["--config", str(cfg), "--work-dir", str(run), "--set", *TINY, "train.epochs=100"],
                     ["--work-dir", str(run), "--resume"]):
            second = _run(*args)
            line = _error_line(second)
            assert second.returncode == 2 and str(run) in line and f"PID {first.pid}" in line, line
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 143


@pytest.mark.slow
def test_resume_trusts_the_checkpoint_config(reference, tmp_path):
    """config.yaml emptied: refused naming the keys; deleted: rewritten from the checkpoint; a stale .tmp is
    removed; a finished run is not evaluated again (no TensorBoard points added)."""
    run = tmp_path / "run"
    proc = _run("--config", str(_cfg(tmp_path, 1)), "--work-dir", str(run), "--set", *TINY, "eval.interval=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run / "metrics.json").unlink()  # as if the final evaluation had failed
    (run / "config.yaml").write_text("")
    proc = _run("--work-dir", str(run), "--resume")
    line = _error_line(proc)
    assert proc.returncode == 2 and str(run / "config.yaml") in line and "model.name" in line and "train.epochs" in line
    (run / "config.yaml").unlink()
    (run / "checkpoint.pt.tmp").write_bytes(b"partial")
    proc = _run("--work-dir", str(run), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (run / "checkpoint.pt.tmp").exists() and "interrupted write" in proc.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["name"] == "cifar_resnet8"
    points, metrics = _steps(run, "acc/overall"), (run / "metrics.json").read_text()
    proc = _run("--work-dir", str(run), "--resume")
    assert proc.returncode == 0 and "already finished" in proc.stderr
    assert _steps(run, "acc/overall") == points and (run / "metrics.json").read_text() == metrics


# -------------------------------------------------------------------------------- failures during the run


def test_non_finite_loss_is_one_line_naming_step_value_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = _run("--config", str(_cfg(tmp_path, 1)), "--work-dir", str(run), "--set", *TINY, "train.lr=1e30",
                "train.log_interval=1", "train.warmup_epochs=0")
    assert proc.returncode == 1
    line = _error_line(proc)
    assert "the training loss is nan at step" in line or "the training loss is inf at step" in line, line
    assert "no checkpoint was written yet" in line and "train.lr" in line


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_save, calls = torch.save, []

    def save_then_fill_the_disk(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint: a partial file, then torch's zip writer error
            Path(f).write_bytes(b"PK\x03\x04partial")
            monkeypatch.setattr(ltcls_io.shutil, "disk_usage", lambda folder: Usage(10 << 30, 10 << 30, 0))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_mod.torch, "save", save_then_fill_the_disk)
    with pytest.raises(SystemExit) as info:
        train_main(["--config", str(_cfg(tmp_path, 2)), "--work-dir", str(run), "--set", *TINY, "eval.interval=0"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert f"no space left on device while writing {run / 'checkpoint.pt'}" in err and "Traceback" not in err
    assert not list(run.glob("*.tmp"))
    monkeypatch.setattr(checkpoint_mod.torch, "save", real_save)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_print_config_runs_the_checks_without_refusing_an_existing_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"x")  # an existing run: training would refuse, --print-config does not
    cfg = str(_cfg(tmp_path, 1))
    assert train_main(["--config", cfg, "--work-dir", str(run), "--print-config", "--set", *TINY]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == "cifar_resnet8"
    with pytest.raises(SystemExit) as info:  # the same start-up checks as a run
        train_main(["--config", cfg, "--work-dir", str(run), "--print-config", "--set", *TINY, "eval.split=val"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "eval.split" in err and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]  # nothing written, no lock taken
