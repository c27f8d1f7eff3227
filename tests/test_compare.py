"""``ltcls-compare``: the aggregation against hand-computed numbers, the csv, the grid (stage 1 shared by the
second stages, finished runs re-read, failures reported without stopping the grid) with a fake launcher that
writes what the commands would, and one tiny real grid on digits_lt."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from ltcls.cli.compare import ProcessLauncher, compare_main, launch
from ltcls.compare import CSV_COLUMNS, Outcome, csv_text, method_rows, paired, plan, summarize

BASE = str(Path(__file__).parents[1] / "configs" / "digits_lt_ce.yaml")


def test_mean_sample_sd_and_paired_differences_by_hand():
    s = summarize([70.0, 72.0, 77.0])
    assert s.n == 3 and s.mean == pytest.approx(73.0)
    assert s.sd == pytest.approx(math.sqrt(((70 - 73) ** 2 + (72 - 73) ** 2 + (77 - 73) ** 2) / 2))  # n - 1
    assert summarize([5.0]).sd is None and summarize([None, 5.0]).mean == 5.0 and summarize([]).mean is None
    d = paired({0: 75.0, 1: 80.0, 2: 70.0}, {0: 70.0, 1: 72.0, 3: 60.0})  # seeds both have: 0 and 1
    assert d.n == 2 and d.mean == pytest.approx(6.5) and d.sd == pytest.approx(math.sqrt(4.5))


def _m(overall, many, medium, few):
    return {"overall": overall, "many": many, "medium": medium, "few": few}


def test_rows_and_csv_by_hand():
    results = {"ce": {0: _m(70, 100, 90, 40), 1: _m(74, 100, 92, 44), 2: _m(72, 98, 91, 42)},
               "crt": {0: _m(75, 96, 93, 55), 2: _m(80, 97, 95, 63)}}
    rows = method_rows(results, {"crt": {1: "ltcls-train: error: boom"}}, ["ce", "crt"], [0, 1, 2])
    assert rows[1].missing == {1: "ltcls-train: error: boom"} and rows[1].seeds == [0, 2]
    lines = list(csv.reader(csv_text(rows).splitlines()))
    assert tuple(lines[0]) == CSV_COLUMNS
    assert lines[0][:10] == ["method", "seeds", "overall_mean", "overall_sd", "many_mean", "many_sd", "medium_mean",
                             "medium_sd", "few_mean", "few_sd"]
    assert lines[0][10:12] == ["d_overall_mean", "d_overall_sd"]
    ce = dict(zip(lines[0], lines[1]))
    assert ce["method"] == "ce" and ce["seeds"] == "3" and ce["overall_mean"] == "72.0000"
    assert ce["overall_sd"] == "2.0000" and ce["d_overall_mean"] == "" and ce["missing"] == ""
    crt = dict(zip(lines[0], lines[2]))
    assert crt["seeds"] == "2" and crt["few_mean"] == "59.0000" and crt["missing"] == "1"
    # paired over seeds 0 and 2: few 55 - 40 = 15, 63 - 42 = 21 -> 18 +- sqrt(18); overall 5, 8 -> 6.5
    assert crt["d_few_mean"] == "18.0000" and float(crt["d_few_sd"]) == pytest.approx(math.sqrt(18), abs=1e-4)
    assert crt["d_overall_mean"] == "6.5000"


def test_plan_shares_one_stage_one_per_seed(tmp_path):
    runs = plan(Path(BASE), ["crt", "tau_norm", "dual_sel", "dual_avg", "logit_adjusted_posthoc"], [0, 1], tmp_path,
                ["train.epochs=2"])
    names = [(r.seed, r.dir.name) for r in runs]
    assert names == [(s, n) for s in (0, 1) for n in ("ce", "crt", "tau_norm", "crt_dual", "logit_adjusted_posthoc")]
    for r in runs:
        if r.dir.name != "ce":
            assert r.depends is not None and r.depends.dir == tmp_path / f"seed{r.seed}" / "ce"
            assert str(r.depends.dir) in r.argv
    ce = runs[0]
    assert ce.argv[:2] == ["--config", BASE] and ce.argv[-1] == "train.seed=0" and "train.epochs=2" in ce.argv
    assert [r.name for r in runs[3].recipes] == ["dual_sel", "dual_avg"]
    assert runs[4].command == "eval" and "--logit-adjust-tau" in runs[4].argv


class FakeCommands:
    """Stands in for ltcls-train / ltcls-eval: writes the run directory's metrics.json (numbers from the run's
    name and seed), or fails for the runs named in ``fail``; counts the calls."""

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.fail = set(fail)

    def __call__(self, command: str, argv: Sequence[str]) -> Outcome:
        argv = list(argv)
        self.calls.append((command, argv))
        out = Path(argv[argv.index("--out" if command == "eval" else "--work-dir") + 1])
        if out.name in self.fail:
            return Outcome(2, f"ltcls-train: error: {out.name} cannot run")
        if "--stage2" in argv:
            assert (Path(argv[argv.index("--from") + 1]) / "metrics.json").is_file()  # on a finished stage 1
        seed = int(out.parent.name.removeprefix("seed"))
        base = {"ce": 70, "seesaw": 80, "crt": 75, "crt_dual": 76}.get(out.name, 60) + seed
        metrics = _m(base, 99.0, base + 10, base - 30 + 2 * seed)
        if out.name == "crt_dual":
            metrics["dual_head"] = {"sel": _m(base + 1, 99.0, 90.0, 50.0), "avg": _m(base + 2, 99.0, 90.0, 45.0)}
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics))
        return Outcome(0)


def _compare(tmp_path, launcher, methods="ce,seesaw,crt,tau_norm,dual_sel,dual_avg", *extra):
    return compare_main(["--config", BASE, "--methods", methods, "--seeds", "0", "1", "2", "--work-dir",
                         str(tmp_path / "cmp"), *extra], launcher=launcher)


def _table(tmp_path) -> dict[str, dict[str, str]]:
    with open(tmp_path / "cmp" / "comparison.csv") as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_grid_writes_the_table_and_a_second_call_only_rereads(tmp_path, capsys):
    fake = FakeCommands()
    assert _compare(tmp_path, fake) == 0
    # per seed: ce, seesaw, crt, tau_norm, and one crt_dual run for dual_sel and dual_avg
    assert len(fake.calls) == 3 * 5
    assert sum("--stage2" in argv for _, argv in fake.calls) == 3 * 3
    table = _table(tmp_path)
    assert list(table) == ["ce", "seesaw", "crt", "tau_norm", "dual_sel", "dual_avg"]
    assert table["ce"]["overall_mean"] == "71.0000" and table["ce"]["overall_sd"] == "1.0000"
    assert table["seesaw"]["d_overall_mean"] == "10.0000" and table["seesaw"]["d_overall_sd"] == "0.0000"
    assert table["dual_sel"]["overall_mean"] == "78.0000" and table["dual_avg"]["overall_mean"] == "79.0000"
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| ce | 3/3 | 71.0 ± 1.0 |" in md and "| seesaw | 3/3 | 81.0 ± 1.0 |" in md and "Missing" not in md
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| method | seeds | overall |" in capsys.readouterr().out

    again = FakeCommands()
    assert _compare(tmp_path, again) == 0
    assert again.calls == []  # every run finished: only re-read
    assert _table(tmp_path) == table


def test_a_failing_run_is_reported_and_the_grid_goes_on(tmp_path):
    fake = FakeCommands(fail={"seesaw"})
    assert _compare(tmp_path, fake, "ce,seesaw,crt") == 1
    assert len(fake.calls) == 9  # every run was tried
    table = _table(tmp_path)
    assert table["seesaw"]["seeds"] == "0" and table["seesaw"]["missing"] == "0 1 2"
    assert table["seesaw"]["overall_mean"] == "" and table["crt"]["seeds"] == "3"
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "- seesaw, seed 1: ltcls-train: error: seesaw cannot run" in md

    # a stage 1 that fails: its second stages are not launched and say why
    fails = FakeCommands(fail={"ce"})
    assert _compare(tmp_path / "other", fails, "ce,crt") == 1
    assert all("--stage2" not in argv for _, argv in fails.calls) and len(fails.calls) == 3
    md = (tmp_path / "other" / "cmp" / "comparison.md").read_text()
    assert "- crt, seed 0: its stage 1 (ce) has no result: ltcls-train: error: ce cannot run" in md

    # the failed runs are tried again by the next call; the finished ones are not
    retry = FakeCommands()
    assert _compare(tmp_path, retry, "ce,seesaw,crt") == 0
    assert sorted(Path(argv[argv.index("--work-dir") + 1]).name for _, argv in retry.calls) == ["seesaw"] * 3


def test_a_finished_run_with_other_arguments_is_not_reused(tmp_path):
    assert _compare(tmp_path, FakeCommands(), "ce,crt") == 0
    fake = FakeCommands()
    assert _compare(tmp_path, fake, "ce,crt", "--set", "train.epochs=3") == 1
    assert fake.calls == []
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "was run with other arguments" in md and "its stage 1 (ce) has no result" in md


def test_a_comment_edit_keeps_the_runs_and_a_changed_value_does_not(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(Path(BASE).read_text())
    argv = ["--config", str(base), "--methods", "ce,crt", "--seeds", "0", "--work-dir", str(tmp_path / "cmp")]
    assert compare_main(argv, launcher=FakeCommands()) == 0
    base.write_text("# measured: a comment added after the runs\n" + Path(BASE).read_text())
    again = FakeCommands()
    assert compare_main(argv, launcher=again) == 0 and again.calls == []  # same values: re-read
    base.write_text(Path(BASE).read_text().replace("lr: 0.1", "lr: 0.05"))
    assert "lr: 0.05" in base.read_text()
    changed = FakeCommands()
    assert compare_main(argv, launcher=changed) == 1 and changed.calls == []
    assert "was run on another version of" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_grid_entries_of_the_file_digest_are_still_read(tmp_path):
    """grid.json entries written before the digest of values (``base``: the file's bytes) keep their runs."""
    assert _compare(tmp_path, FakeCommands(), "ce,crt") == 0
    manifest = tmp_path / "cmp" / "grid.json"
    entries = json.loads(manifest.read_text())
    for entry in entries.values():
        del entry["config"]
        entry["base"] = hashlib.sha256(Path(BASE).read_bytes()).hexdigest()[:16]
    manifest.write_text(json.dumps(entries))
    again = FakeCommands()
    assert _compare(tmp_path, again, "ce,crt") == 0 and again.calls == []


def test_an_interrupt_stops_the_grid_and_the_next_call_resumes(tmp_path):
    fake = FakeCommands()

    def interrupted(command, argv):
        if len(fake.calls) == 2:
            fake.calls.append((command, list(argv)))
            return Outcome(130, "ltcls-train: interrupted by SIGINT at step 3")
        return fake(command, argv)

    assert _compare(tmp_path, interrupted, "ce,crt") == 130
    assert len(fake.calls) == 3
    assert "interrupted" in (tmp_path / "cmp" / "comparison.md").read_text()
    rest = FakeCommands()
    assert _compare(tmp_path, rest, "ce,crt") == 0
    assert len(rest.calls) == 6 - 2


def test_jobs_run_side_by_side_and_a_second_stage_waits_for_its_first(tmp_path):
    fake, lock, now = FakeCommands(), threading.Lock(), {"running": 0, "most": 0}

    def side_by_side(command, argv):
        with lock:
            now["running"] += 1
            now["most"] = max(now["most"], now["running"])
        time.sleep(0.05)  # long enough for the other worker to start
        try:
            return fake(command, argv)  # asserts that a --stage2 run's --from has finished
        finally:
            with lock:
                now["running"] -= 1

    assert _compare(tmp_path, side_by_side, "ce,seesaw,crt,tau_norm", "--jobs", "2") == 0
    assert now["most"] == 2 and len(fake.calls) == 3 * 4
    sequential = tmp_path / "seq"
    sequential.mkdir()
    assert _compare(sequential, FakeCommands(), "ce,seesaw,crt,tau_norm") == 0
    assert (tmp_path / "cmp" / "comparison.csv").read_text() == (sequential / "cmp" / "comparison.csv").read_text()
    with pytest.raises(SystemExit):
        _compare(tmp_path, FakeCommands(), "ce", "--jobs", "0")


def test_with_jobs_an_interrupt_starts_nothing_new_and_the_next_call_resumes(tmp_path):
    fake, lock, calls = FakeCommands(), threading.Lock(), []

    def interrupted(command, argv):
        with lock:
            calls.append(argv)
            second = len(calls) == 2
        if second:
            return Outcome(130, "ltcls-train: interrupted by SIGINT at step 3")
        time.sleep(0.05)
        return fake(command, argv)

    assert _compare(tmp_path, interrupted, "ce,crt", "--jobs", "2") == 130
    assert len(calls) == 2  # the two stage-1 runs that had started; nothing after the interrupt
    done = len(list((tmp_path / "cmp").glob("seed*/*/metrics.json")))
    assert done == 1
    rest = FakeCommands()
    assert _compare(tmp_path, rest, "ce,crt", "--jobs", "2") == 0
    assert len(rest.calls) == 6 - done


def test_the_process_launcher_logs_each_run_and_returns_its_error_line(tmp_path):
    launcher = ProcessLauncher(tmp_path, threads=1)
    out = launcher("train", ["--config", str(tmp_path / "missing.yaml"), "--work-dir", str(tmp_path / "seed3" / "ce")])
    assert out.code == 2 and out.error.startswith("ltcls-train: error: config file") and "missing.yaml" in out.error
    assert "missing.yaml" in (tmp_path / "logs" / "seed3_ce.log").read_text()


def test_the_process_launcher_passes_a_signal_on_and_starts_nothing_after(tmp_path):
    child = tmp_path / "child.py"  # stands in for ltcls-train: stops cleanly on SIGINT, as signals.py makes it
    child.write_text("import signal, sys, time\n"
                     "def stop(signum, frame):\n"
                     "    print('ltcls-train: interrupted by SIGINT at step 3', flush=True)\n"
                     "    sys.exit(130)\n"
                     "signal.signal(signal.SIGINT, stop)\n"
                     "print('ready', flush=True)\n"
                     "time.sleep(60)\n")
    launcher = ProcessLauncher(tmp_path, threads=1, python=[sys.executable, str(child)])
    got = []
    argv = ["--work-dir", str(tmp_path / "seed0" / "ce")]
    worker = threading.Thread(target=lambda: got.append(launcher("train", argv)))
    worker.start()
    log = tmp_path / "logs" / "seed0_ce.log"
    deadline = time.monotonic() + 30
    while not (log.is_file() and "ready" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    launcher.forward(signal.SIGINT)
    worker.join(30)
    assert got == [Outcome(130, "ltcls-train: interrupted by SIGINT at step 3")]
    later = launcher("train", ["--work-dir", str(tmp_path / "seed0" / "crt")])
    assert later.code == 130 and "not started" in later.error and not (tmp_path / "logs" / "seed0_crt.log").exists()


def test_usage_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        compare_main(["--config", BASE, "--methods", "ce,bogus", "--work-dir", str(tmp_path)])
    assert e.value.code == 2 and "unknown method(s) bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        compare_main(["--config", BASE, "--methods", "ce", "--work-dir", str(tmp_path), "--set", "train.epochs=x"])
    assert e.value.code == 2 and "ltcls-compare: error: train.epochs" in capsys.readouterr().err


def test_the_real_launcher_returns_the_commands_error_line(tmp_path):
    out = launch("train", ["--config", str(tmp_path / "missing.yaml"), "--work-dir", str(tmp_path / "run")])
    assert out.code == 2 and out.error.startswith("ltcls-train: error: config file") and "missing.yaml" in out.error
    out = launch("eval", [str(tmp_path / "nothing"), "--split", "bogus"])  # argparse's error: after its usage lines
    assert out.code == 2 and out.error.startswith("ltcls-eval: error: argument --split")


@pytest.mark.slow
def test_a_tiny_real_grid_on_digits_lt(tmp_path):
    """ltcls-train / ltcls-eval for real: 2 stage-1 epochs, cRT and tau-norm on the shared stage 1, 2 seeds."""
    work = tmp_path / "cmp"
    argv = ["--config", BASE, "--methods", "ce,crt,tau_norm", "--seeds", "0", "1", "--work-dir", str(work),
            "--set", "train.epochs=2", "eval.interval=0", "train.batch_size=128"]
    assert compare_main(argv) == 0
    table = {row["method"]: row for row in csv.DictReader(open(work / "comparison.csv"))}
    assert list(table) == ["ce", "crt", "tau_norm"] and all(row["seeds"] == "2" for row in table.values())
    for name in ("ce", "crt", "tau_norm"):
        for seed in (0, 1):
            metrics = json.loads((work / f"seed{seed}" / name / "metrics.json").read_text())
            assert 0 <= metrics["overall"] <= 100
    ce = [json.loads((work / f"seed{s}" / "ce" / "metrics.json").read_text())["overall"] for s in (0, 1)]
    assert float(table["ce"]["overall_mean"]) == pytest.approx(sum(ce) / 2, abs=1e-3)
    crt = yaml.safe_load((work / "seed1" / "crt" / "config.yaml").read_text())
    assert crt["stage2"]["from_run"] == str(work / "seed1" / "ce") and crt["train"]["seed"] == 1
    mtimes = {p: p.stat().st_mtime for p in work.rglob("metrics.json")}
    assert compare_main(argv) == 0  # a second call trains nothing
    assert {p: p.stat().st_mtime for p in work.rglob("metrics.json")} == mtimes


@pytest.mark.slow
def test_a_tiny_real_grid_with_jobs(tmp_path):
    """--jobs 2: each run is its own ltcls-train process with its console log; the table is complete."""
    work = tmp_path / "cmp"
    argv = ["--config", BASE, "--methods", "ce,crt", "--seeds", "0", "1", "--work-dir", str(work), "--jobs", "2",
            "--set", "train.epochs=1", "eval.interval=0", "train.batch_size=128"]
    assert compare_main(argv) == 0
    table = {row["method"]: row for row in csv.DictReader(open(work / "comparison.csv"))}
    assert all(table[m]["seeds"] == "2" for m in ("ce", "crt"))
    for seed in (0, 1):
        assert (work / "logs" / f"seed{seed}_ce.log").stat().st_size > 0
        assert "stage2" in yaml.safe_load((work / f"seed{seed}" / "crt" / "config.yaml").read_text())
