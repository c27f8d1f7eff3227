"""Checkpoint writes that fail (a full disk: simulated errno, and torch's real zip-writer failure under a file-size
limit) and checkpoint files that cannot be loaded: each gives one line naming the file and the reason."""

from __future__ import annotations

import argparse
import errno
import os
import pickle
import resource
import signal
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from ltcls import io as ltcls_io
from ltcls.engine.checkpoint import Checkpoint, CheckpointError, CheckpointWriteError, TrainingState

Usage = namedtuple("Usage", "total used free")


def _checkpoint(epoch: int, weight: torch.Tensor | None = None) -> Checkpoint:
    training = TrainingState(stage=0, epoch=epoch, step=3 * epoch, optimizer={"state": {}}, scheduler={},
                             sampler={"epoch": epoch}, rng={}, batch=0, world_size=1)
    return Checkpoint(model={"w": torch.arange(4.0) if weight is None else weight}, config={"train": {"lr": 0.1}},
                      num_classes=2, class_names=["a", "b"], history=[{"stage": "stage1", "epoch": epoch}],
                      training=training, loss={"counts": torch.ones(2)}, method="crt", tau=0.5)


def save_checkpoint(ckpt: Checkpoint, path: Path) -> None:
    ckpt.save(path)


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    """A run folder holding a good checkpoint (epoch 1)."""
    path = tmp_path / "checkpoint.pt"
    _checkpoint(1).save(path)
    return path


def _assert_previous_kept(path: Path) -> None:
    assert Checkpoint.load(path).training.epoch == 1
    assert sorted(os.listdir(path.parent)) == ["checkpoint.pt"]  # no temporary file left behind


def test_save_and_load_round_trip(previous):
    ckpt = Checkpoint.load(previous)
    assert ckpt.training.epoch == 1 and ckpt.training.step == 3 and ckpt.training.world_size == 1
    assert torch.equal(ckpt.model["w"], torch.arange(4.0)) and torch.equal(ckpt.loss["counts"], torch.ones(2))
    assert (ckpt.class_names, ckpt.num_classes, ckpt.method, ckpt.tau) == (["a", "b"], 2, "crt", 0.5)
    assert ckpt.config == {"train": {"lr": 0.1}} and ckpt.history == [{"stage": "stage1", "epoch": 1}]
    assert ckpt.position == (1, 3, 0)


def test_a_model_that_only_evaluates_has_no_training_state(tmp_path):
    path = tmp_path / "checkpoint.pt"
    Checkpoint(model={"w": torch.ones(1)}, config={}, num_classes=1, class_names=["x"], tau=1.2).save(path)
    ckpt = Checkpoint.load(path)
    assert ckpt.training is None and ckpt.position == (0, 0, 0) and ckpt.tau == 1.2


def test_load_into_names_the_file_when_the_weights_do_not_fit(previous):
    with pytest.raises(CheckpointError, match=f"^the checkpoint {previous} does not fit the model rebuilt"):
        Checkpoint.load(previous).load_into(torch.nn.Linear(3, 3), previous)


def test_disk_full_errno_removes_partial_file_and_keeps_previous(previous, monkeypatch):
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # what was written before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint(_checkpoint(2), previous)
    assert str(info.value) == (f"no space left on device while writing {previous} (the partial file was removed; the "
                               "previous checkpoint.pt, if any, is kept); free some space, then resume with --resume")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    _assert_previous_kept(previous)


@pytest.fixture
def file_size_limit():
    """Writes past 64 KiB fail with EFBIG (SIGXFSZ ignored) while the fixture is active: torch's zip writer then
    fails exactly as on a full disk (``RuntimeError ... unexpected pos``, the errno lost)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def test_real_torch_write_failure_on_a_full_disk(previous, monkeypatch, file_size_limit):
    big = _checkpoint(2, torch.zeros(1 << 18))  # 1 MiB
    monkeypatch.setattr(ltcls_io.shutil, "disk_usage", lambda folder: Usage(10 << 30, 10 << 30, 0))
    with pytest.raises(CheckpointWriteError, match="^no space left on device while writing " + str(previous)):
        save_checkpoint(big, previous)
    _assert_previous_kept(previous)


def test_real_torch_write_failure_with_free_space_is_not_called_disk_full(previous, monkeypatch, file_size_limit):
    monkeypatch.setattr(ltcls_io.shutil, "disk_usage", lambda folder: Usage(10 << 30, 1 << 30, 9 << 30))
    with pytest.raises(RuntimeError, match="unexpected pos") as info:
        save_checkpoint(_checkpoint(2, torch.zeros(1 << 18)), previous)
    assert not isinstance(info.value, CheckpointError)
    _assert_previous_kept(previous)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(CheckpointWriteError, match=f"folder '{tmp_path / 'gone'}' does not exist"):
        save_checkpoint(_checkpoint(1), tmp_path / "gone" / "checkpoint.pt")


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))  # what a malicious checkpoint could do while being unpickled


def _bad_files(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, the reason its error must give)."""
    data = good.read_bytes()
    files = {"empty": (b"", "the file is empty (0 bytes"),
             "truncated": (data[: len(data) // 2], "the file is truncated or corrupt"),
             "yaml": (b"model: resnet\n", "not a PyTorch checkpoint (expected the zip archive torch.save writes; "
                                          "the file starts with b'mode')"),
             "pickle": (pickle.dumps({"epoch": 1}), "not a PyTorch checkpoint")}
    out = {}
    for name, (content, reason) in files.items():
        (folder / f"{name}.pt").write_bytes(content)
        out[name] = (folder / f"{name}.pt", reason)
    with zipfile.ZipFile(folder / "zip.pt", "w") as z:
        z.writestr("notes.txt", "hello")
    out["zip"] = (folder / "zip.pt", "torch cannot read it (RuntimeError: ")
    torch.save({"args": argparse.Namespace(lr=0.1)}, folder / "namespace.pt")
    out["namespace"] = (folder / "namespace.pt", "it holds Python objects other than tensors and plain values "
                                                 "(argparse.Namespace), which ltcls refuses to unpickle")
    torch.save({"model": _RunsCode(str(folder / "pwned"))}, folder / "code.pt")
    out["code"] = (folder / "code.pt", "(posix.mkdir), which ltcls refuses to unpickle because that can run "
                                       "arbitrary code; resume only from checkpoints that ltcls wrote")
    torch.save({"epoch": 1}, folder / "nomodel.pt")
    out["nomodel"] = (folder / "nomodel.pt", "it holds no model weights ('model'; keys: epoch")
    torch.save([1, 2], folder / "list.pt")
    out["list"] = (folder / "list.pt", "expected a dict of training state, got list")
    return out


def test_unloadable_checkpoints_give_one_line_with_file_and_reason(tmp_path, previous):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, (path, reason) in _bad_files(bad, previous).items():
        with pytest.raises(CheckpointError) as info:
            Checkpoint.load(path)
        message = str(info.value)
        assert message.startswith(f"cannot load checkpoint {path}: ") and reason in message, (name, message)
        assert "\n" not in message and "weights_only" not in message, (name, message)
        err = info.value  # no chained torch traceback (with its advice) under the line
        assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), name
    assert not (bad / "pwned").exists()  # the code-executing checkpoint ran nothing
    with pytest.raises(FileNotFoundError, match=f"no checkpoint at {bad / 'none.pt'}"):
        Checkpoint.load(bad / "none.pt")
