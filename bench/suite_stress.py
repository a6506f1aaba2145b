"""Does the test suite pass every time, on an idle machine and on a busy one?

CI runs ``make test`` on a fresh clone of main on a machine that may be busy; a test that passes
only when the machine is idle is a red CI waiting to happen. This runs what CI runs, several times:

1. clones this repository's HEAD into a temporary folder (with ``../shared`` linked beside it, as CI
   has it) and builds its venv once (``make venv``, timed apart);
2. runs ``make test`` there ``--runs`` times on the machine as it is, then ``--hog-runs`` times while
   a CPU hog (one busy process per core) keeps every core busy the whole time;
3. reports per run the exit code, wall time and test counts, the failing tests, and the slowest tests
   (median over the runs of each mode, from pytest's JUnit XML).

    python bench/suite_stress.py [--runs 5] [--hog-runs 3] [--name suite_stress] [--keep]

Writes ``bench/results/<name>.json`` and ``.md``; exits 0 when every run passed, 1 when one failed,
2 on bad arguments or when the clone or its venv could not be made.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, write_results

HOG = "while True: pass"


def start_hog() -> list[subprocess.Popen]:
    """One busy-looping process per core, for as long as the runs take."""
    return [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 1)]


def stop_hog(hog: list[subprocess.Popen]) -> None:
    for p in hog:
        p.kill()
    for p in hog:
        p.wait()


def fresh_clone(where: Path) -> Path:
    """``git clone`` of HEAD, with ``../shared`` beside it where this checkout has one (as in CI)."""
    clone = where / "p"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (where / "shared").symlink_to(shared)
    return clone


def read_junit(path: Path) -> tuple[dict[str, int], dict[str, float], list[str]]:
    """(counts by outcome, seconds per test, failing tests) from pytest's JUnit XML."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    times: dict[str, float] = {}
    failing: list[str] = []
    if not path.is_file():
        return counts, times, failing
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        times[name] = float(case.get("time") or 0.0)
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            failing.append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, times, failing


def run_suite(clone: Path, index: int, mode: str, logs: Path) -> dict[str, Any]:
    junit = logs / f"run{index}-{mode}.xml"
    log = logs / f"run{index}-{mode}.log"
    env = {**os.environ, "PYTEST_ADDOPTS": f"--junitxml={junit}"}
    t0 = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.run(["make", "test"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - t0
    counts, times, failing = read_junit(junit)
    tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
    return {"run": index, "mode": mode, "exit_code": code, "wall_s": round(wall, 1), **counts,
            "failing": failing, "last_line": tail[0] if tail else "", "times": times}  # fmt: skip


def slowest(runs: list[dict[str, Any]], n: int = 10) -> list[tuple[str, float]]:
    per_test: defaultdict[str, list[float]] = defaultdict(list)
    for r in runs:
        for name, t in r["times"].items():
            per_test[name].append(t)
    medians = {name: statistics.median(ts) for name, ts in per_test.items()}
    return sorted(medians.items(), key=lambda kv: -kv[1])[:n]


def results(runs: list[dict[str, Any]], commit: str, venv_s: float, planned: int) -> dict[str, Any]:
    summary = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        mine = [r for r in runs if r["mode"] == mode]
        walls = [r["wall_s"] for r in mine]
        summary[mode] = {"runs": len(mine), "passed_runs": sum(r["exit_code"] == 0 for r in mine),
                         "max_wall_s": max(walls), "median_wall_s": statistics.median(walls),
                         "slowest": slowest(mine)}  # fmt: skip
    return {"machine": machine(), "commit": commit, "venv_s": round(venv_s, 1), "planned_runs": planned,
            "summary": summary, "runs": [{k: v for k, v in r.items() if k != "times"} for r in runs]}  # fmt: skip


def table(data: dict[str, Any]) -> str:
    lines = [
        "# Test suite under stress",
        "",
        f"`make test` on a fresh clone of `{data['commit']}`, {data['machine']['cpu']} "
        f"({data['machine']['cores']} cores), {data['machine']['date']}. "
        f"Venv built once before the runs: {data['venv_s']:.0f} s. `idle`: the machine as it is; "
        "`loaded`: one busy-looping process per core the whole time. "
        f"{len(data['runs'])} of {data['planned_runs']} planned runs done.",
        "",
        "| mode | runs | passed | slowest run | median run |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, s in data["summary"].items():
        lines.append(f"| {mode} | {s['runs']} | {s['passed_runs']} of {s['runs']} | {s['max_wall_s'] / 60:.1f} min | "
                     f"{s['median_wall_s'] / 60:.1f} min |")  # fmt: skip
    lines += ["", "| run | mode | exit | wall | tests passed / failed / skipped | failing |",
              "|---:|---|---:|---:|---|---|"]
    for r in data["runs"]:
        lines.append(f"| {r['run']} | {r['mode']} | {r['exit_code']} | {r['wall_s'] / 60:.1f} min | "
                     f"{r['passed']} / {r['failed']} / {r['skipped']} | {', '.join(r['failing']) or '-'} |")
    for mode, s in data["summary"].items():
        lines += ["", f"Slowest tests, {mode} (median seconds over its runs):", "", "| test | s |", "|---|---:|"]
        lines += [f"| `{name}` | {t:.1f} |" for name, t in s["slowest"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="runs on the machine as it is (default 5)")
    p.add_argument("--hog-runs", type=int, default=3, help="runs with every core kept busy (default 3)")
    p.add_argument("--name", default="suite_stress", help="results file name under bench/results/")
    p.add_argument("--keep", action="store_true", help="keep the clone, its venv and the logs (printed)")
    args = p.parse_args(argv)
    if args.runs < 0 or args.hog_runs < 0 or args.runs + args.hog_runs == 0:
        p.error("--runs and --hog-runs must be >= 0, and not both 0")

    where = Path(tempfile.mkdtemp(prefix="proad-stress-"))
    hog: list[subprocess.Popen] = []
    try:
        try:
            clone = fresh_clone(where)
            t0 = time.monotonic()
            subprocess.run(["make", "venv"], cwd=clone, check=True, stdout=subprocess.DEVNULL)
            venv_s = time.monotonic() - t0
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"error: could not prepare the fresh clone: {exc}", file=sys.stderr)
            return 2
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
        logs = where / "logs"
        logs.mkdir()
        runs: list[dict[str, Any]] = []
        plan = ["idle"] * args.runs + ["loaded"] * args.hog_runs
        for i, mode in enumerate(plan, 1):
            if mode == "loaded" and not hog:
                hog = start_hog()
            r = run_suite(clone, i, mode, logs)
            runs.append(r)
            print(f"run {i}/{len(plan)} ({mode}): exit {r['exit_code']}, {r['wall_s'] / 60:.1f} min, "
                  f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped"
                  + (f"; failing: {', '.join(r['failing'])}" if r["failing"] else ""), flush=True)  # fmt: skip
            data = results(runs, commit, venv_s, len(plan))
            write_results(args.name, data, table(data), show=i == len(plan))  # kept if a later run is cut short
        stop_hog(hog)
        hog = []
        if args.keep:
            print(f"clone and logs kept in {where}")
        return 0 if all(r["exit_code"] == 0 for r in runs) else 1
    finally:
        stop_hog(hog)
        if not args.keep:
            shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
