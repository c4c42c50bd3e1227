"""`benchmarks/device_parity.py` runs and compares all 11 losses and the AuxDPO penalty.

On a machine without a GPU it compares the CPU with itself, so this checks the script, not an accelerator; on a
GPU machine the same script is the check (benchmarks/README.md, "On a GPU")."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_device_parity_script_runs_every_loss():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_parity.py"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "device_parity: 14 of 14 agree" in done.stdout
    for loss in ["dpo", "ipo", "cdpo", "rdpo", "dpop", "simpo", "safedpo", "margin_dpo", "orpo", "kto", "auxdpo"]:
        assert f"loss {loss} (float64)" in done.stdout
