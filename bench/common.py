"""Shared helpers of the benchmark scripts: where they ran, and how results are written."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def real_roots() -> list[Path]:
    """The real MVTec-AD-layout roots in ``../shared/data`` (MVTec AD bottle, Magnetic Tile, ...);
    none where that folder is absent. A root is a folder with a category that has ``train/good``."""
    if not SHARED_DATA.is_dir():
        return []
    return sorted(p for p in SHARED_DATA.iterdir() if p.is_dir() and any(p.glob("*/train/good")))


def machine() -> dict[str, Any]:
    """What the numbers were measured on (CPU model, cores, library versions, date)."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import torch

        info["torch"] = str(torch.__version__)
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    with contextlib.suppress(OSError):  # "+changes": tracked files differed from that commit when it ran
        info["git"] = subprocess.run(
            ["git", "describe", "--always", "--dirty=+changes", "--exclude=*"], cwd=REPO, capture_output=True,
            text=True, check=False,
        ).stdout.strip()
    return info


def write_results(name: str, data: dict[str, Any], table: str, show: bool = True) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` and ``results/<name>.md``; with ``show``, print the table and paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    js, md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    js.write_text(json.dumps(data, indent=2) + "\n")
    md.write_text(table.rstrip() + "\n")
    if show:
        print(table)
        print(f"wrote {js} and {md}")
    return js, md


def throughput(run: Callable[[Any], Any], images: Any, seconds: float) -> float:
    """Images per second of ``run(images)`` called flat out for ``seconds`` (after one warm-up call)."""
    run(images)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(images)
        done += len(images)
    return done / (time.perf_counter() - t0)
