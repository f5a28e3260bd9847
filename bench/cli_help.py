"""How long `oda --help`, `oda-node --help` and their subcommands' help take, as a person types them.

Each command runs as its own process (the installed console scripts), 9 times; the median is
printed beside the median of a bare interpreter start (`python -c pass`, the floor no CLI can
beat) measured in the same loop, and their ratio. Target: under 0.5 s each. The help paths load
no heavy library (OpenDP, pandas, Flower): tests/e2e/test_cli_startup.py checks that.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = [
    ["oda", "--help"],
    ["oda", "run", "--help"],
    ["oda", "coordinator", "--help"],
    ["oda", "blueprint", "--help"],
    ["oda-node", "--help"],
    ["oda-node", "start", "--help"],
    ["oda-node", "enrol", "--help"],
    ["oda-node", "fit", "--help"],
]
REPEAT = 9


def _time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    floor: list[float] = []
    times: dict[str, list[float]] = {" ".join(c): [] for c in COMMANDS}
    for _ in range(REPEAT):
        floor.append(_time([sys.executable, "-c", "pass"]))
        for command in COMMANDS:
            times[" ".join(command)].append(_time([str(BIN / command[0]), *command[1:]]))
    base = statistics.median(floor)
    print(f"cli help latency, median of {REPEAT} runs (target < 0.5 s)")
    print(f"  {'python -c pass (floor)':<28} {base * 1000:7.0f} ms")
    for name, values in times.items():
        median = statistics.median(values)
        flag = "ok" if median < 0.5 else "OVER"
        print(f"  {name:<28} {median * 1000:7.0f} ms  x{median / base:4.1f} the floor  {flag}")


if __name__ == "__main__":
    main()
