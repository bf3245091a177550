"""The record every benchmark writes: its figures with the machine and code they were measured on.

    from bench.record import write_result
    path = write_result("schedule", {"spaces": ...})     # bench/results/schedule.json

The record names the CPU model and cores, the load averages when it was written (figures taken on
a loaded machine are noisy), the Python, torch and Ray versions and the git commit.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

from ray_mtl.results import code_version

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)  # without importing it
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1_5_15m": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "ray": _version("ray"),
        "commit": code_version(),
    }


def write_result(name: str, figures: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json``: ``figures`` under the machine they were measured on."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {
        "bench": name,
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **figures,
    }
    # numpy's scalars (a bool from comparing two of its floats, say) as Python's
    text = json.dumps(record, indent=1, default=lambda x: x.item() if hasattr(x, "item") else x)
    path.write_text(text + "\n")
    return path
