"""The slowest tests of a `make test` run, as the markdown tables of docs/testing.md.

Reads pytest's `--durations` section from each backend's log in runs/test-logs/:

    python tests/durations_table.py jax tensorflow --top 12
"""

import argparse
import pathlib
import re

LOGS = pathlib.Path(__file__).resolve().parent.parent / "runs" / "test-logs"
DURATION = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+tests/(\S+)$")


def slowest(log, top):
    lines = log.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "slowest" in line and "durations" in line)
    rows = [DURATION.match(line) for line in lines[start + 1 :]]
    return [row.groups() for row in rows if row][:top]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backends", nargs="+", help="backends whose logs to read (runs/test-logs/BACKEND.log)")
    parser.add_argument("--top", type=int, default=12, help="rows per backend")
    arguments = parser.parse_args()
    for backend in arguments.backends:
        log = LOGS / f"{backend}.log"
        if not log.exists():
            parser.error(f"{log} does not exist: run `make test` (or `make test BACKENDS={backend}`) first")
        print(f"{backend}, {log.read_text().splitlines()[-1].strip('= ')}\n")
        print("| seconds | phase | test |\n|---|---|---|")
        for seconds, phase, test in slowest(log, arguments.top):
            print(f"| {float(seconds):.0f} | {phase} | `{test}` |")
        print()


if __name__ == "__main__":
    main()
