"""`metrics.jsonl` grows by appending whole rows: earlier rows are never rewritten, a row that cannot be written in
full leaves no part of itself, and a torn last line (a crash mid-write) is dropped when the run is next opened."""

import json
import os
import subprocess
import sys

from iterdpo.rundir.metrics import MetricsLog


def test_rows_are_appended_without_rewriting_the_earlier_ones(tmp_path):
    log = MetricsLog(tmp_path)
    log.append({"round": 0, "eval/reward_mean": 0.5})
    before, inode = log.path.read_bytes(), os.stat(log.path).st_ino
    log.append({"round": 1, "loss/mean": float("nan")})
    after = log.path.read_bytes()
    assert after.startswith(before) and os.stat(log.path).st_ino == inode  # the same file, grown
    assert [json.loads(line) for line in after.decode().splitlines()] == [
        {"round": 0, "eval/reward_mean": 0.5}, {"round": 1, "loss/mean": None}]  # NaN: null
    assert MetricsLog(tmp_path).rows == log.rows


def test_a_torn_last_line_is_dropped_on_opening(tmp_path):
    rows = [{"round": 0, "a": 1}, {"round": 1, "a": 2}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"round": 2, "a"')
    log = MetricsLog(tmp_path)
    assert log.rows == rows and path.read_text().splitlines() == [json.dumps(r, sort_keys=True) for r in rows]
    log.append({"round": 2, "a": 3})
    assert [json.loads(line)["round"] for line in path.read_text().splitlines()] == [0, 1, 2]


WRITE_PAST_THE_LIMIT = """
import resource, signal, sys
from iterdpo.rundir.metrics import MetricsLog
log = MetricsLog(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
size = log.path.stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, size + 100))  # room for 100 bytes of the next row
try:
    log.append({"round": 1, "long": "x" * 1000})
except OSError as err:
    print(err.errno)
"""


def test_a_row_that_does_not_fit_leaves_no_part_of_itself(tmp_path):
    log = MetricsLog(tmp_path)
    log.append({"round": 0, "a": 1})
    before = log.path.read_bytes()
    done = subprocess.run([sys.executable, "-c", WRITE_PAST_THE_LIMIT, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "27", done.stderr  # EFBIG, after 100 bytes went in
    assert log.path.read_bytes() == before
