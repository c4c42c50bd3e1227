"""`benchmarks/device_parity.py`: all 11 losses and the AuxDPO penalty, on the CPU and on an accelerator.

On a machine without a GPU there is nothing to compare: the script refuses, and its verdicts are checked on a
known difference instead. On a GPU machine the script itself is the check (benchmarks/README.md, "On a GPU")."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iterdpo.training.losses import LOSSES

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "device_parity.py"


def _script():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("device_parity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_verdicts_catch_a_difference_the_size_of_a_wrong_kernel():
    """The CPU's own numbers agree with themselves; one loss's gradient off by 1e-7 (float64), or the penalty off by
    1e-3 relative (float32), is a disagreement, named."""
    parity = _script()
    cpu = parity.measure("cpu")
    assert parity.verdicts(cpu, cpu)[1] == 0 and len(cpu) == len(LOSSES) + 3
    value, grad = cpu["loss kto (float64)"]
    off = {**cpu, "loss kto (float64)": (value, grad + 1e-7)}
    rows, failed = parity.verdicts(cpu, off)
    assert failed == 1 and [row[0] for row in rows if row[-1] == "DIFFERS"] == ["loss kto (float64)"]
    penalty, _ = cpu["AuxDPO null-space penalty (float32)"]
    rows, failed = parity.verdicts(cpu, {**cpu, "AuxDPO null-space penalty (float32)": (penalty * 1.001, None)})
    assert failed == 1


def test_the_script_refuses_to_compare_the_cpu_with_itself():
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "comparing the CPU with itself would prove nothing" in done.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: it compares the GPU's numbers with the CPU's")
def test_on_a_gpu_every_loss_agrees_with_the_cpu():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"device_parity: {len(LOSSES) + 3} of {len(LOSSES) + 3} agree" in done.stdout
    for loss in LOSSES:
        assert f"loss {loss} (float64)" in done.stdout
