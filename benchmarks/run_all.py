"""Run every benchmark on the BENCH_RESULT protocol and gather its results: ``make bench``.

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--timeout SECONDS] [--output PATH]

A benchmark takes part when it is ``benchmarks/<name>.py`` (not this runner, not a ``_helper``
module) and its source prints ``BENCH_RESULT`` lines (the convention of issue 19): each one runs
alone, compares against a baseline in the same run and prints, per measured target, one line
``BENCH_RESULT {json}`` with ``stage, metric, ours, baseline, ratio, target, met, unit`` (baseline
and ratio null for absolute targets; met null for a figure reported without a target), or ``BENCH_SKIP <reason>`` when its data is absent. Older
scripts that print neither (training sweeps, quality runs) are listed as not taking part.

Each script runs as a subprocess (``--quick`` passed through), so one crash or hang is recorded
against that script and the others still run. The results are printed as one table and written
to ``benchmarks/results/latest.json`` (atomically: a reader never sees half a file):
``{"quick": bool, "started": iso time, "host_cpus": n, "benchmarks": [{name, returncode, seconds,
skipped, error, results: [...]}]}``. Exit status 1 when a script failed (crash, timeout, or no
result line); targets not met are shown in the table, not turned into a failure, because the
machine these run on may be shared and timings are noisy.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))

from ml_code.atomic import write_json_atomic  # noqa: E402

RESULT_PREFIX = "BENCH_RESULT "
SKIP_PREFIX = "BENCH_SKIP"
RESULT_FIELDS = ("stage", "metric", "ours", "baseline", "ratio", "target", "met", "unit")
DEFAULT_OUTPUT = BENCH_DIR / "results" / "latest.json"


def participating(bench_dir: Path = BENCH_DIR) -> dict[str, Path]:
    """name -> script of every benchmark on the protocol: ``*.py`` in ``bench_dir`` whose source
    mentions ``BENCH_RESULT``, except this runner and ``_``-prefixed helper modules."""
    found = {}
    for path in sorted(bench_dir.glob("*.py")):
        if path.name.startswith("_") or path.resolve() == Path(__file__).resolve():
            continue
        if RESULT_PREFIX.strip() in path.read_text(errors="replace"):
            found[path.stem] = path
    return found


def parse_output(stdout: str) -> tuple[list[dict], str | None]:
    """(result records, skip reason or None) from a benchmark's stdout. A malformed result line
    raises ValueError naming it: a benchmark that breaks the protocol must not pass silently."""
    results, skipped = [], None
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            try:
                record = json.loads(line[len(RESULT_PREFIX):])
            except json.JSONDecodeError as exc:
                raise ValueError(f"BENCH_RESULT line is not JSON ({exc}): {line[:200]}") from None
            missing = [f for f in RESULT_FIELDS if f not in record]
            if missing:
                raise ValueError(f"BENCH_RESULT line lacks {missing}: {line[:200]}")
            results.append(record)
        elif line.startswith(SKIP_PREFIX):
            skipped = line[len(SKIP_PREFIX):].strip() or "skipped"
    return results, skipped


def run_one(name: str, script: Path, quick: bool, timeout: float) -> dict:
    """Run one benchmark as a subprocess and collect its result lines (never raises)."""
    cmd = [sys.executable, str(script), *(["--quick"] if quick else [])]
    started = time.perf_counter()
    entry: dict = {"name": name, "returncode": None, "seconds": None, "skipped": None, "error": None, "results": []}
    try:
        proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        entry.update(seconds=round(time.perf_counter() - started, 1), error=f"timed out after {timeout:.0f}s")
        return entry
    entry.update(returncode=proc.returncode, seconds=round(time.perf_counter() - started, 1))
    try:
        entry["results"], entry["skipped"] = parse_output(proc.stdout)
    except ValueError as exc:
        entry["error"] = str(exc)
    if proc.returncode != 0:
        entry["error"] = f"exit status {proc.returncode}: " + (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
    elif not entry["results"] and not entry["skipped"] and not entry["error"]:
        entry["error"] = "printed no BENCH_RESULT or BENCH_SKIP line"
    return entry


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(entries: list[dict]) -> str:
    """The results as one fixed-width table: stage, metric, ours, baseline, ratio, target, met?"""
    header = ("benchmark", "stage", "metric", "ours", "baseline", "ratio", "target", "met?")
    rows = []
    for entry in entries:
        if entry["error"]:
            rows.append((entry["name"], "-", f"ERROR: {entry['error'][:70]}", "", "", "", "", ""))
        elif entry["skipped"] and not entry["results"]:
            rows.append((entry["name"], "-", f"skipped: {entry['skipped'][:70]}", "", "", "", "", ""))
        for r in entry["results"]:
            unit = f" {r['unit']}" if r.get("unit") else ""
            rows.append((entry["name"], str(r["stage"]), str(r["metric"]), _fmt(r["ours"]) + unit,
                         _fmt(r["baseline"]) + (unit if r["baseline"] is not None else ""), _fmt(r["ratio"]),
                         str(r["target"]), _fmt(None if r["met"] is None else bool(r["met"]))))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark (small inputs)")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only this benchmark (file stem, repeatable)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per benchmark")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where the JSON results go")
    args = p.parse_args(argv)
    scripts = participating()
    unknown = [n for n in args.only if n not in scripts]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; on the BENCH_RESULT protocol: {sorted(scripts)}", file=sys.stderr)
        return 2
    names = args.only or list(scripts)
    others = sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem not in scripts and p.stem != "run_all")
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    entries = []
    for name in names:
        print(f"[bench] {name}{' --quick' if args.quick else ''} ...", flush=True)
        entries.append(run_one(name, scripts[name], args.quick, args.timeout))
    payload = {"quick": args.quick, "started": started, "host_cpus": os.cpu_count(), "benchmarks": entries,
               "not_on_protocol": others}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output, payload)
    print(table(entries))
    if others and not args.only:
        print(f"\nnot on the BENCH_RESULT protocol (run them directly): {', '.join(others)}")
    print(f"\nresults: {args.output}")
    return 1 if any(e["error"] for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
