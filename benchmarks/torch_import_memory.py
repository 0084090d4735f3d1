"""Diagnostic: how much resident memory importing torch costs on this machine, and of what kind.

    python benchmarks/torch_import_memory.py

Why: the monitoring benchmark's peak (``benchmarks/monitoring_volume.py``, issue 19 P5: a
``drift_report`` run must stay under 1 GB) is mostly the run process's imports, and of those torch
(the CUDA build the constraints pin, imported by ``drift_report`` to embed the requests' views)
is the largest. How much of its shared libraries a process holds resident depends on the kernel
that maps them, so the same code reads differently on two machines; this script shows the split
for the machine it runs on, from Linux's ``/proc/self/smaps_rollup`` (MiB): ``Rss``, of which
``Private_Clean`` (file pages of the libraries, reclaimable: the kernel can drop and re-read them;
``Shared_Clean`` instead while another process maps the same libraries) and ``Anonymous``
(relocated tables, static data, allocations). Prints one JSON object; not on the
protocol of `make bench` (no baseline, no target). Linux only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Anonymous", "Shared_Clean")


def rollup(path: Path = Path("/proc/self/smaps_rollup")) -> dict[str, float]:
    """The :data:`FIELDS` of this process's memory rollup, in MiB (the kernel reports kB)."""
    values: dict[str, float] = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if name in FIELDS and len(parts) == 2 and parts[1] == "kB":
            values[name] = round(int(parts[0]) / 1024, 1)
    return values


def main() -> int:
    if not Path("/proc/self/smaps_rollup").is_file():
        print("BENCH_SKIP /proc/self/smaps_rollup not found (Linux 4.14 or newer only)")
        return 0
    before = rollup()
    t0 = time.perf_counter()
    import torch

    seconds = time.perf_counter() - t0
    after = rollup()
    print(json.dumps({
        "torch": torch.__version__, "cuda_build": torch.version.cuda, "import_seconds": round(seconds, 2),
        "before_mib": before, "after_mib": after,
        "import_adds_mib": {k: round(after[k] - before.get(k, 0.0), 1) for k in after},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
