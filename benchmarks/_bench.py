"""Shared pieces of the benchmark scripts: interleaved timing, ratios with targets, and small tables.

The machine these run on is shared and noisy, so no figure is compared with one taken at another time: the two
sides of a ratio take turns within every repeat (A B, then B A, ...), and a ratio is the median of the ratios of
adjacent measurements, which cancels slow drift in the background load.
"""

from __future__ import annotations

import argparse

import operator
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from anywhere: the project's packages come first
    sys.path.insert(0, str(ROOT))

_TARGET_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass
class Measured:
    """The runs of one side: seconds per run and, where the side counts work (tokens), the amount per run."""

    seconds: list[float] = field(default_factory=list)
    amounts: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rates(self) -> list[float]:
        return [amount / seconds for amount, seconds in zip(self.amounts, self.seconds)]

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates)


def interleaved(sides: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, Measured]:
    """Runs every side `warmup` times untimed, then `repeats` timed times, alternating the order (A B C, C B A,
    A B C, ...) so that neither side always runs first. A side may return a number (e.g. tokens generated): it is
    kept as that run's amount."""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            start = time.perf_counter()
            sides[name]()
            progress(f"warm-up  {name}: {time.perf_counter() - start:.3f} s")
    measured = {name: Measured() for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            start = time.perf_counter()
            amount = sides[name]()
            measured[name].seconds.append(time.perf_counter() - start)
            if isinstance(amount, (int, float)):
                measured[name].amounts.append(float(amount))
            progress(f"repeat {repeat + 1}  {name}: {measured[name].seconds[-1]:.3f} s")
    return measured


def run_parser(description: str) -> argparse.ArgumentParser:
    """Flags of the scripts that run the orchestrator: a config, its dotted overrides, the model and P."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=str(ROOT / "configs" / "smoke.yaml"))
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. generator.max_new_tokens=32")
    parser.add_argument("--model", default=None, help="overrides model.path (default: the config's)")
    parser.add_argument("--prompts", type=int, default=None, help="P (default: the config's data.prompts_per_round)")
    return parser


def run_config(args: argparse.Namespace, *extra: str):
    """The config a `run_parser` script runs: --config with its dotted overrides, --model, --prompts, then `extra`."""
    from iterdpo.config.loading import load_config

    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model.path={args.model}")
    if args.prompts:
        overrides.append(f"data.prompts_per_round={args.prompts}")
    return load_config(args.config, overrides + list(extra))


def progress(text: str) -> None:
    """One line per run on stderr, so a long benchmark shows where it is; the results go to stdout."""
    print(f"   {text}", file=sys.stderr, flush=True)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over repeats of numerator[i] / denominator[i]: each pair was measured back to back."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def ratio_line(label: str, value: float, target: tuple[str, float] | None = None) -> str:
    """`label = 0.97 (target >= 0.95, met)`; a ratio without a target is reported as information only."""
    if target is None:
        return f"{label} = {value:.3f} (no target, reported)"
    op, bound = target
    verdict = "met" if _TARGET_OPS[op](value, bound) else "NOT met"
    return f"{label} = {value:.3f} (target {op} {bound:g}, {verdict})"


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(value.ljust(w) for value, w in zip(row, widths)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def peak_rss_gib() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def quiet_logs() -> None:
    """vLLM and Ray log at INFO by default; the benchmark's own table is what matters."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def header(title: str, settings: dict[str, Any]) -> None:
    """The benchmark's name and settings, and the machine it ran on: the CPU model and the load average, as
    timings (and even ratios) differ between CPU models and under load."""
    print(f"== {title}")
    print("   " + ", ".join(f"{key}={value}" for key, value in settings.items()))
    print(f"   machine: {cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "CPU model unknown"


def load_line() -> str:
    """The load average at the end, beside the one `header` printed at the start."""
    return f"   load average {os.getloadavg()[0]:.2f} at the end"


def read_status_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB
    return peak_rss_gib()


def reset_peak_rss() -> float:
    """Resets this process's peak-RSS mark (Linux: `5` to /proc/self/clear_refs); returns the RSS now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the peak then includes the shared setup, on both sides alike
    return read_status_gib("VmRSS")


def available_gib() -> float:
    """Memory the system can still hand out (Linux: MemAvailable), GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20  # kB
    return float("inf")
