"""torchrun on CPU (gloo): a 2-process run equals a 1-process run with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "digits_lt_ce.yaml"
WORKER = Path(__file__).parent / "scripts" / "dist_worker.py"
# A GroupNorm model: BatchNorm statistics are per process on CPU (SyncBatchNorm needs CUDA), GroupNorm has none.
SMALL = ["model.name=test_efficientnet_gn", "data.img_size=16", "train.epochs=3", "train.batch_size=32",
         "train.lr=0.01", "train.num_workers=0", "eval.interval=0"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--standalone", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(), cwd=ROOT)


def _single(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), "train", "--", *args], capture_output=True, text=True,
                          timeout=600, env=_env(), cwd=ROOT)


def _train_args(work_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(CONFIG), "--work-dir", str(work_dir), "--set", *SMALL, *extra]


def _test_logits(run: Path) -> torch.Tensor:
    from ltcls.stage2.inference import load_run

    loaded = load_run(run)
    return loaded.runner().predict(loaded.model, loaded.data.test, progress=False)[0]


def _same_run(a: Path, b: Path, exact: bool = False) -> None:
    """Same metrics, weights and loss state: float64 runs (see scripts/dist_worker.py) agree to rounding
    across process counts; the same process count (resume) is bit-identical."""
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["per_class"] == mb["per_class"] and ma["overall"] == mb["overall"]
    sa, sb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (a, b))
    for k, v in sa["model"].items():
        tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-9, "atol": 1e-10}
        torch.testing.assert_close(v, sb["model"][k], **tol, msg=k)
    for k, v in sa["loss"].items():  # loss state (Seesaw's cumulative counts) is global
        assert torch.equal(v, sb["loss"][k]), k


@pytest.mark.slow  # two torchrun processes plus one: ~25 s each on 2 cores
@pytest.mark.parametrize("loss", ["ce", "seesaw"])
def test_two_processes_equal_one(tmp_path, loss):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _single(*_train_args(one, f"loss.name={loss}"))
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = _torchrun(str(WORKER), "train", "--", *_train_args(two, f"loss.name={loss}"))
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "(2 processes)" in (two / "train.log").read_text()
    m = json.loads((one / "metrics.json").read_text())
    assert m["overall"] > 20.0  # the model learned something: the comparison is not between two trivial runs
    _same_run(one, two)
    if loss == "seesaw":
        counts = torch.load(two / "checkpoint.pt", weights_only=True)["loss"]["cum_samples"]
        assert counts.sum() > 0


def test_seesaw_counts_identical_on_every_rank(tmp_path):
    r = _torchrun(str(WORKER), "seesaw", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    gen = torch.Generator().manual_seed(0)
    expected = torch.zeros(5, dtype=torch.long)
    for _ in range(4):
        expected += torch.bincount(torch.randint(0, 5, (12,), generator=gen), minlength=5)
        torch.randn(12, 5, generator=gen)
    assert ranks[0] == ranks[1] == expected.tolist()


@pytest.mark.slow  # ~45 s on 2 cores
def test_two_process_resume_matches_uninterrupted(tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    r = _torchrun(str(WORKER), "train", "--", *_train_args(full))
    assert r.returncode == 0, r.stderr[-3000:]
    r = _torchrun(str(WORKER), "crash", "3", "--", *_train_args(broken))
    assert r.returncode != 0 and not (broken / "metrics.json").exists()
    assert torch.load(broken / "checkpoint.pt", weights_only=True)["epoch"] == 2
    r = _torchrun(str(WORKER), "train", "--", "--work-dir", str(broken), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    _same_run(full, broken, exact=True)


@pytest.mark.slow  # three torchrun launches: ~2 min on 2 cores
def test_torchrun_interrupt_prints_a_torchrun_resume_that_works(tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    r = _torchrun(str(WORKER), "train", "--", *_train_args(full, "train.checkpoint_on_signal=true",
                                                            "train.log_interval=1"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = _torchrun(str(WORKER), "stop", "10", "--", *_train_args(broken, "train.checkpoint_on_signal=true",
                                                                 "train.log_interval=1"))
    assert r.returncode != 0 and not (broken / "metrics.json").exists(), r.stderr[-3000:]
    hint = [ln for ln in r.stderr.splitlines() if ln.startswith("ltcls-train:") and "resume with: " in ln]
    assert len(hint) == 1, r.stderr[-3000:]  # rank 0 alone says it
    command = hint[0].split("resume with: ", 1)[1].split()
    assert command == ["torchrun", "--nproc-per-node", "2", "-m", "ltcls.cli", "train", "--work-dir", str(broken),
                       "--resume"]
    one = _single("--work-dir", str(broken), "--resume")  # another number of processes changes the result
    assert one.returncode == 2 and "was trained with 2 process(es) but this command runs 1" in one.stderr
    r = _torchrun(str(WORKER), "train", "--", *command[command.index("--work-dir"):])
    assert r.returncode == 0, r.stderr[-3000:]
    _same_run(full, broken, exact=True)
