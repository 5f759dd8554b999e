"""scripts/cluster-test multi | faults | webhooks | soak [--minutes N] | all (= multi + faults + webhooks).

Run through scripts/cluster-test, which builds the binary, sets CLUSTER_DIR / CLUSTER_BIN
and the own services (CLUSTER_OWN_SERVICES=1), and stops everything afterwards."""

from __future__ import annotations

import argparse
import sys
import time

from .common import Cluster, log


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/cluster-test")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("multi", help="the multi-instance test")
    sub.add_parser("faults", help="Postgres / Redis restarts, kill -9 of an instance and of the worker, MAIL_DIR full or read-only")
    sub.add_parser("webhooks", help="a webhook receiver down for a minute, a hung one beside a healthy one, Redis restarted mid-delivery")
    s = sub.add_parser("soak", help="mixed traffic at a fixed rate, RSS and Redis memory")
    s.add_argument("--minutes", type=float, default=10.0)
    s.add_argument("--rate", type=float, default=100.0, help="requests per second in all (100)")
    sub.add_parser("all", help="multi, then faults, then webhooks")
    args = ap.parse_args()

    cluster = Cluster()
    started = time.monotonic()
    tests = []
    try:
        if args.cmd in ("multi", "all"):
            from . import multi

            tests += multi.run(cluster)
        if args.cmd in ("faults", "all"):
            from . import faults

            tests += faults.run(cluster)
        if args.cmd in ("webhooks", "all"):
            from . import webhooks

            tests += webhooks.run(cluster)
        if args.cmd == "soak":
            from . import soak

            tests += soak.run(cluster, args.minutes, args.rate)
    finally:
        log("stopping the cluster and its own services")
        cluster.down()
    failed = [t for t in tests if not t.passed]
    print()
    print(f"=== {args.cmd}: {len(tests) - len(failed)} of {len(tests)} tests passed in {time.monotonic() - started:.0f} s")
    for t in tests:
        print(f"  {'PASS' if t.passed else 'FAIL'}  {t.title}")
        for f in t.failures:
            print(f"          failed: {f}")
    return 1 if failed or not tests else 0


if __name__ == "__main__":
    sys.exit(main())
