"""From a push to a healthy guest: where the time goes, stage by stage.

Run: ``python bench/e2e_latency.py [--rounds 3]`` (as root: it makes a network
namespace, a bridge and TAPs; the first run builds the test guest, see
``tests/guest/README.md``).

The scene of the end-to-end test (``tests/e2e/stack.py``): a Git server, the control
plane (gunicorn, a Celery worker, Redis, SQLite), an S3 server, and an agent whose
Firecracker double boots real guests under QEMU. Round 0 pushes two new services
(``web`` linked to ``api``); every later round changes ``web``'s memory, so ``web``
is recreated. For ``web`` in each round:

1. webhook -> published: the push delivered, until the run finished (published).
2. published -> seen: until the agent logs the new desired state.
3. seen -> VM started: until the agent logs ``web``'s VM running (a recreate
   includes stopping the old VM: Ctrl-Alt-Del, the guest reboots).
4. started -> healthy: until ``web`` passes its health check (the guest boots
   under TCG emulation here: seconds, where Firecracker on KVM takes ~150 ms).

Propagation (1 + 2, everything but the VM) is what later work pushes below 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.stack import Scene, SceneError, scene, service_specs, wait_until

PROPAGATION_TARGET = 2.0
STAGES = (
    "webhook -> published",
    "published -> seen",
    "seen -> started",
    "started -> healthy",
)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def measure(running: Scene, files: dict[str, str | None], message: str) -> list[float]:
    """Push ``files``; the four stage durations for ``web``, in seconds."""
    revision = running.push(files, message)
    pushed = running.pushes[-1]
    published = _epoch(revision["finished_at"])
    agent = running.agent

    def logged(pattern: str, after: float) -> float:
        found: float = wait_until(
            lambda: agent.first_logged(pattern, after), 240, pattern, agent
        )
        return found

    seen = logged(r"desired state services=", published)
    started = logged(r"vm running service=web ", seen)
    healthy = logged(r"service healthy service=web$", started)
    return [published - pushed, seen - published, started - seen, healthy - started]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="memory changes of web")
    args = parser.parse_args()
    rows: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="fw-e2e-bench-") as tmp:
        began = time.monotonic()
        with scene(Path(tmp)) as running:
            print(f"scene up in {time.monotonic() - began:.1f} s")
            first = service_specs(running.guest, running.images)
            rows.append(("new web + api", measure(running, first, "web and api")))
            for n in range(args.rounds):
                memory = 144 if n % 2 == 0 else 128
                specs = service_specs(running.guest, running.images, web_memory=memory)
                label = f"web memory -> {memory}"
                rows.append((label, measure(running, specs, label)))
    print_table(rows)
    return 0


def print_table(rows: list[tuple[str, list[float]]]) -> None:
    """Each round's stages, their medians, and propagation against its target."""
    width = max(len(label) for label, _ in rows)
    header = " | ".join(f"{s:>22}" for s in (*STAGES, "push -> healthy"))
    print(f"{'round':<{width}} | {header}")
    for label, stages in rows:
        cells = " | ".join(f"{v:>20.3f} s" for v in (*stages, sum(stages)))
        print(f"{label:<{width}} | {cells}")
    medians = [statistics.median(s[i] for _, s in rows) for i in range(len(STAGES))]
    cells = " | ".join(f"{v:>20.3f} s" for v in (*medians, sum(medians)))
    print(f"{'median':<{width}} | {cells}")
    propagation = medians[0] + medians[1]
    ratio = propagation / PROPAGATION_TARGET
    print(
        f"propagation (webhook -> seen by the agent), median: {propagation:.3f} s; "
        f"target {PROPAGATION_TARGET:.1f} s; ratio {ratio:.2f}"
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SceneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
