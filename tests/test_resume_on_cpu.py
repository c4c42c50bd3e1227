"""Stop the driver at several points of a run, by SIGKILL, by SIGINT/SIGTERM (a clean stop), or by a disk that fills
or turns read-only; `iterdpo resume` finishes it with the same metrics and weights. Meanwhile one run holds the
directory: a second `resume` is refused with one line naming it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_runs import ROOT, cli, comparable, rows

pytestmark = pytest.mark.slow


# Phases long enough to be interrupted in (generation about a second, training a few steps).
ARGS = ["configs/smoke.yaml", "run.rounds=2", "data.prompts_per_round=16", "generator.max_new_tokens=48"]


def _phases(run_dir: Path, index: int) -> list[str] | None:
    """The phases round `index` has finished; None before it starts."""
    manifest = _manifest(run_dir, index)
    return manifest.get("phases_done") if manifest else None


def _wait_for(process: subprocess.Popen, point, run_dir: Path) -> None:
    deadline = time.monotonic() + 600
    while not point(run_dir):
        assert process.poll() is None, "the run ended before the point"
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _manifest(run_dir: Path, index: int) -> dict:
    try:
        return json.loads((run_dir / f"round_{index:03d}" / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _after(index: int, phase: str):
    """A kill point: round `index` has finished `phase`."""
    return lambda run_dir: phase in _manifest(run_dir, index).get("phases_done", [])


def _finished_run(run_dir: Path, args: list[str]) -> list[dict]:
    process = cli("run", *args, "--run-dir", str(run_dir))
    assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    return rows(run_dir)


KILL_POINTS = {
    "round 1 after train": _after(1, "train"),
    "round 2 after generate": _after(2, "generate"),
    "round 2 after sync_weights": _after(2, "sync_weights"),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _finished_run(tmp_path_factory.mktemp("whole") / "run", ARGS)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_resume_after_sigkill_matches_an_uninterrupted_run(uninterrupted, tmp_path, point):
    run_dir = tmp_path / "run"
    process = cli("run", *ARGS, "--run-dir", str(run_dir))
    _wait_for(process, KILL_POINTS[point], run_dir)
    process.send_signal(signal.SIGSTOP)  # frozen at the kill point, still holding the directory
    second = cli("resume", str(run_dir))  # the directory is in use: refused, naming the holder
    assert second.wait(timeout=120) == 2
    refusal = [line for line in second.stderr.read().splitlines() if line.strip()]
    assert len(refusal) == 1 and f"is in use by pid {process.pid}" in refusal[0], refusal
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert len(rows(run_dir)) < len(uninterrupted)

    resumed = cli("resume", str(run_dir))
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    finished = rows(run_dir)
    assert [comparable(row) for row in finished] == [comparable(row) for row in uninterrupted]
    assert finished[-1]["policy/end_hash"] == uninterrupted[-1]["policy/end_hash"]  # the final weights, bit for bit


SIGNAL_POINTS = {
    "SIGTERM during generation": ([signal.SIGTERM], lambda d: _phases(d, 2) == [], "generate"),
    "SIGINT during training": ([signal.SIGINT], lambda d: (_phases(d, 1) or [])[-1:] == ["reference"], "train"),
    "SIGTERM twice": ([signal.SIGTERM, signal.SIGTERM], lambda d: (_phases(d, 1) or [])[-1:] == ["reference"],
                      None),
}


@pytest.mark.parametrize("point", list(SIGNAL_POINTS))
def test_a_signal_stops_the_run_cleanly_and_resume_matches(uninterrupted, tmp_path, point):
    import psutil

    signals, reached, phase = SIGNAL_POINTS[point]
    run_dir, log = tmp_path / "run", tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "iterdpo", "run", *ARGS, "--run-dir", str(run_dir)],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    _wait_for(process, reached, run_dir)
    started = psutil.Process(process.pid).children(recursive=True)  # the Ray node and actors this run started
    sent = time.monotonic()
    for signum in signals:
        process.send_signal(signum)
        # A second press of Ctrl-C comes once the first stop is under way (two at once are one signal).
        while len(signals) > 1 and "stopping" not in log.read_text() and process.poll() is None:
            time.sleep(0.01)
    code = process.wait(timeout=120)
    stopped_in = time.monotonic() - sent
    err = log.read_text()
    assert code == 128 + signals[-1], err[-2000:]
    assert stopped_in < 60 and "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert ("stopped at once" if len(signals) > 1 else f"stopped by {signals[0].name}") in last, last
    if phase is not None:  # a clean stop: it stopped inside the phase and took down what it started
        index = 2 if phase == "generate" else 1
        assert phase not in _phases(run_dir, index)
        assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    resumed = cli("resume", str(run_dir))
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    assert [comparable(row) for row in rows(run_dir)] == [comparable(row) for row in uninterrupted]


STORAGE = r"""
set -u
mount -t tmpfs -o size=512m tmpfs "$MOUNT"
"$PYTHON" -m iterdpo run $ARGS --run-dir "$MOUNT/run" 2> "$OUT/first.err" &
pid=$!
until [ "$(cat "$MOUNT/run/metrics.jsonl" 2>/dev/null | wc -l)" -ge 2 ]; do
  kill -0 $pid 2>/dev/null || break
  sleep 0.02
done
dd if=/dev/zero of="$MOUNT/filler" bs=1M 2>/dev/null
wait $pid; echo $? > "$OUT/first.code"
cp "$MOUNT/run/metrics.jsonl" "$OUT/kept.jsonl"
rm "$MOUNT/filler"
"$PYTHON" -m iterdpo resume "$MOUNT/run" 2> "$OUT/resume.err"; echo $? > "$OUT/resume.code"
cp "$MOUNT/run/metrics.jsonl" "$OUT/final.jsonl"
"""


def test_a_disk_that_fills_ends_the_run_with_one_line_and_resume_goes_on(uninterrupted, tmp_path):
    """The run directory on a filesystem of its own (tmpfs in a private mount namespace), which another process
    fills up after round 1; then space is freed and the run resumed. (A read-only remount is refused while the run
    holds files open for writing, so the full disk stands for both.)"""
    mount = tmp_path / "mount"
    mount.mkdir()
    env = {**os.environ, "MOUNT": str(mount), "OUT": str(tmp_path), "PYTHON": sys.executable,
           "ARGS": " ".join(ARGS)}
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", STORAGE], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    first = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.code").read_text().strip() == "1" and "Traceback" not in first, first[-3000:]
    last = [line for line in first.splitlines() if line.strip()][-1]
    assert "No space left on device" in last and "the finished rounds are kept" in last and "iterdpo resume" in last, last
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert [comparable(row) for row in kept] == [comparable(row) for row in uninterrupted[: len(kept)]]
    assert len(kept) >= 2  # no finished round was lost
    assert (tmp_path / "resume.code").read_text().strip() == "0", (tmp_path / "resume.err").read_text()[-3000:]
    final = [json.loads(line) for line in (tmp_path / "final.jsonl").read_text().splitlines()]
    assert [comparable(row) for row in final] == [comparable(row) for row in uninterrupted]


# Online at any cadence: a round is one optimizer step (8 prompts, the global batch), evaluated every 2 rounds and
# saved every 3 (evaluated rounds always): 1 stands unsaved, 2 is evaluated, 3 stands saved, 4 is the last. One step
# ahead at the same cadence: round 2 (evaluated, saved) generates round 3's samples with round 1's weights, which are
# not saved; a resume reads those samples back from round 2's folder.
CADENCE_ARGS = ["configs/smoke.yaml", "run.rounds=4", "run.eval_every=2", "run.checkpoint_every=3",
                "data.prompts_per_round=8", "learner.micro_batch_size=8", "generator.max_new_tokens=48"]
SCHEDULES = {"cadence": CADENCE_ARGS, "one step ahead": CADENCE_ARGS + ["run.async_generation=true"]}
CADENCE_KILL_POINTS = {
    # round 1 stood unsaved: the resume redoes it from pi0 (its row, already written, is dropped first), and one
    # step ahead with it the samples it generated ahead for round 2
    ("cadence", "round 2 after train"): _after(2, "train"),
    # round 3 stood saved: the resume starts from its weights
    ("cadence", "round 4 after sync_weights"): _after(4, "sync_weights"),
    ("one step ahead", "round 2 after train"): _after(2, "train"),
    ("one step ahead", "round 3 after wait_ahead"): _after(3, "wait_ahead"),
}


@pytest.fixture(scope="module")
def uninterrupted_schedule(tmp_path_factory):
    """Each schedule's uninterrupted run, run once when a test first asks for it."""
    done: dict[str, list[dict]] = {}

    def of(schedule: str) -> list[dict]:
        if schedule not in done:
            done[schedule] = _finished_run(tmp_path_factory.mktemp("cadence") / "run", SCHEDULES[schedule])
        return done[schedule]

    return of


def test_an_uninterrupted_run_at_a_cadence(uninterrupted_schedule):
    done = uninterrupted_schedule("cadence")[1:]
    assert [row["round/evaluated"] for row in done] == [False, True, False, True]
    assert [row["gate/accepted"] for row in done] == [None, True, None, True]
    assert [row["policy/saved"] for row in done] == [False, True, True, True]
    assert all(row["train/steps"] == 1 for row in done)  # one optimizer step a round
    assert ["eval/reward_mean" in row and "safety/refusal_rate" in row for row in done] == [False, True, False, True]
    assert [row["samples/staleness"] for row in uninterrupted_schedule("one step ahead")[1:]] == [0, 1, 1, 1]


@pytest.mark.parametrize("schedule, point", list(CADENCE_KILL_POINTS))
def test_resume_after_sigkill_at_a_cadence_matches_an_uninterrupted_run(uninterrupted_schedule, tmp_path, schedule,
                                                                        point):
    uninterrupted = uninterrupted_schedule(schedule)
    run_dir = tmp_path / "run"
    process = cli("run", *SCHEDULES[schedule], "--run-dir", str(run_dir))
    _wait_for(process, CADENCE_KILL_POINTS[schedule, point], run_dir)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    resumed = cli("resume", str(run_dir))
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    finished = rows(run_dir)
    assert [comparable(row) for row in finished] == [comparable(row) for row in uninterrupted]
    assert finished[-1]["policy/end_hash"] == uninterrupted[-1]["policy/end_hash"]
