"""GracefulInterrupt: real SIGINT / SIGTERM sent to a subprocess running a small step loop stop it at a step
boundary with exit status 130 / 143 and no traceback; a second signal falls back to the default behaviour;
handlers are restored and installed only in the main thread."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from ltcls.engine import signals
from ltcls.engine.signals import GracefulInterrupt, Interrupted, exit_code_of

# signals.py needs only the standard library: the loop loads it by file path, not through ltcls.engine (whose
# __init__ imports torch, ~10 s on a busy 2-core machine).
LOOP = """
import importlib.util, logging, sys, time
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
spec = importlib.util.spec_from_file_location("signals", sys.argv[1])
signals = importlib.util.module_from_spec(spec)
spec.loader.exec_module(signals)
slow_stop = sys.argv[2] == "slow-stop"
with signals.GracefulInterrupt() as interrupt:
    for step in range(1, 100_000):
        time.sleep(0.01)  # one training step
        if step == 1:
            print("ready", flush=True)
        if interrupt.requested:
            if slow_stop:
                print("stopping", flush=True)
                time.sleep(60)  # a long last step: a second signal must not wait for it
            print(f"stopped after step {step} on {interrupt.signal_name}", flush=True)
            sys.exit(interrupt.exit_code)
print("finished", flush=True)
"""


def _run(mode: str, *sends: tuple[str, int]) -> subprocess.CompletedProcess:
    """Start the loop; for each (line, signal): wait until the loop prints ``line``, then send ``signal``."""
    proc = subprocess.Popen([sys.executable, "-c", LOOP, signals.__file__, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out = []
    try:
        for line, signum in sends:
            while (got := proc.stdout.readline()) not in (f"{line}\n", ""):
                out.append(got)
            assert got, f"the loop ended before printing {line!r}: {proc.stderr.read()}"
            out.append(got)
            proc.send_signal(signum)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out) + rest, err)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_loop_at_a_step_boundary(signum, code):
    result = _run("stop", ("ready", signum))
    name = signal.Signals(signum).name
    assert result.returncode == code, result.stderr
    assert f"on {name}\n" in result.stdout and "stopped after step" in result.stdout
    assert "finished" not in result.stdout
    assert result.stderr == (f"WARNING {name} received: stopping at the next safe point (send it again to stop at "
                             "once)\n")


def test_second_ctrl_c_falls_back_to_keyboard_interrupt():
    result = _run("slow-stop", ("ready", signal.SIGINT), ("stopping", signal.SIGINT))
    assert result.returncode == -signal.SIGINT  # Python's exit for an uncaught KeyboardInterrupt
    assert "KeyboardInterrupt" in result.stderr and "stopped after step" not in result.stdout


def test_second_sigterm_terminates():
    result = _run("slow-stop", ("ready", signal.SIGTERM), ("stopping", signal.SIGTERM))
    assert result.returncode == -signal.SIGTERM and "stopped after step" not in result.stdout


def _wait_for(flag) -> None:
    for _ in range(500):
        if flag():
            return
        time.sleep(0.01)  # a signal interrupts the sleep and its Python handler runs


def test_in_process_flag_restore_and_second_signal_reaches_previous_handler():
    seen: list[int] = []

    def previous(signum, frame):
        seen.append(signum)

    old = signal.signal(signal.SIGTERM, previous)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with GracefulInterrupt() as interrupt:
            assert interrupt.installed and signal.getsignal(signal.SIGTERM) == interrupt._handle
            assert not interrupt.requested and interrupt.exit_code is None
            interrupt.raise_if_requested()  # nothing yet
            signal.raise_signal(signal.SIGTERM)
            _wait_for(lambda: interrupt.requested)
            assert (interrupt.signal_name, interrupt.exit_code, seen) == ("SIGTERM", 143, [])
            with pytest.raises(Interrupted, match="last checkpoint: x") as info:
                interrupt.raise_if_requested("last checkpoint: x")
            assert info.value.exit_code == 143 and info.value.signal_name == "SIGTERM"
            signal.raise_signal(signal.SIGTERM)  # second: handed to the previous handler, ours removed
            _wait_for(lambda: seen)
            assert seen == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is previous
        assert signal.getsignal(signal.SIGTERM) is previous and signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGTERM, old)


def test_handlers_restored_on_exit_and_not_installed_off_the_main_thread():
    before = {s: signal.getsignal(s) for s in signals.SIGNALS}
    with pytest.raises(ValueError):
        with GracefulInterrupt():
            raise ValueError
    assert {s: signal.getsignal(s) for s in signals.SIGNALS} == before

    installed = []

    def in_thread():
        with GracefulInterrupt() as interrupt:
            installed.append(interrupt.installed)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert installed == [False] and {s: signal.getsignal(s) for s in signals.SIGNALS} == before
    assert exit_code_of(signal.SIGINT) == 130 and exit_code_of(signal.SIGTERM) == 143
