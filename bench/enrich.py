"""Enrichment throughput and memory on generated repositories.

Run: ``make bench`` or ``python bench/enrich.py [--sizes 1000 10000]``.
Each size runs in a fresh subprocess so its peak RSS is its own, and is enriched
five times: the first (cold) time and the median are printed, with services/s of
the median, its ratio to the 5,000 services/s target, and peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TARGET_PER_SECOND = 5000
RUNS = 5  # per size; the median is reported, the first (cold) run too
NODE_TYPES = 8


def generate(root: Path, count: int) -> None:
    """A repository of ``count`` services: links, env, health checks, forwards."""
    (root / "services").mkdir(parents=True)
    (root / "defaults.yaml").write_text(
        yaml.safe_dump(
            {
                "kernel": "/var/lib/images/vmlinux-6.1",
                "network": True,
                "env": {"LOG_LEVEL": "info"},
                "health_check": {"type": "http", "port": 8080, "path": "/health"},
            }
        )
    )
    for i in range(count):
        node_type = f"pool-{i % NODE_TYPES}"
        spec = {
            "name": f"svc-{i:05d}",
            "image": f"/var/lib/images/svc-{i:05d}.ext4",
            "node_type": node_type,
            "vcpus": 1 + i % 4,
            "memory_mb": 128 * (1 + i % 8),
            "port_forwards": [{"host_port": 10000 + i // NODE_TYPES, "vm_port": 8080}],
            "env": {"INDEX": str(i), "GREETING": "hello world"},
            "metadata": {"team": f"team-{i % 13}", "version": "1.0.0"},
        }
        if i >= NODE_TYPES:  # link to the previous service of the same node type
            spec["links"] = [
                {
                    "service": f"svc-{i - NODE_TYPES:05d}",
                    "env": "UPSTREAM",
                    "port": 8080,
                }
            ]
        (root / "services" / f"svc-{i:05d}.yaml").write_text(yaml.safe_dump(spec))


def measure(count: int) -> dict[str, float]:
    """Enrich one generated repository in this process; return its figures."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from controlplane.enrichment import run_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root, count)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            result = run_pipeline(root)
            times.append(time.perf_counter() - start)
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seconds = statistics.median(times)
    if not result.ok:
        raise SystemExit(f"generated repository is invalid: {result.errors[:3]}")
    produced = sum(len(names) for names in result.services.values())
    assert produced == count, (produced, count)
    return {
        "services": count,
        "first_seconds": times[0],
        "seconds": seconds,
        "per_second": count / seconds,
        "peak_rss_mib": peak_kib / 1024,
        "rss_growth_mib": (peak_kib - before) / 1024,
        "output_kib": sum(len(t) for t in result.configs.values()) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    print(
        f"{'services':>9} {'cold s':>7} {'median s':>8} {'svc/s':>8} "
        f"{'vs target':>9} {'peak RSS':>9} {'growth':>8} {'output':>9}"
    )
    worst = float("inf")
    for size in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout)
        ratio = r["per_second"] / TARGET_PER_SECOND
        worst = min(worst, ratio)
        print(
            f"{size:>9} {r['first_seconds']:>7.2f} {r['seconds']:>8.2f} "
            f"{r['per_second']:>8.0f} "
            f"{ratio:>8.2f}x {r['peak_rss_mib']:>7.0f}Mi {r['rss_growth_mib']:>6.0f}Mi "
            f"{r['output_kib']:>7.0f}Ki"
        )
    print(
        f"target {TARGET_PER_SECOND} services/s: worst ratio {worst:.2f}x "
        f"({'met' if worst >= 1 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
