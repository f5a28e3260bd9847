"""Time and bytes of one overlap ring (`privacy.psi`) between three agencies.

For 10k and 100k identifiers per agency (and 1M with `--full`, about 25 minutes on one core),
a third of each agency's residents shared with each other agency and a tenth with both: every
agency blinds its list, blinds the two others' in turn (the last hop sealed to the counter), and
the counter counts. Each phase is timed at each agency in this process; in a federation the
agencies work in parallel, so a run takes the slowest agency's time per phase (the critical
path, printed). Bytes are what crosses the coordinator (each list up from one agency and down to
the next, base64 as relayed). The baseline in the same process is keying the identifiers
(HMAC-SHA256), which any linkage must do. Prints figures; asserts nothing.
"""

from __future__ import annotations

import sys
import time

from privacy.psi import Blinder, SealKey, keyed_identifiers, pattern_counts, ring_sources, sealed_for

KEY = b"partnership-linkage-key-32-bytes"
PARTIES = ["care", "health", "police"]


def holdings(n: int) -> dict[str, list[str]]:
    """Each agency's n identifiers: a third shared pairwise, a tenth with both others."""
    both, pair = n // 10, n // 3
    shared = [f"ALL{i:09d}" for i in range(both)]
    out = {}
    for i, p in enumerate(PARTIES):
        nxt = PARTIES[(i + 1) % 3]
        prv = PARTIES[(i - 1) % 3]
        mine = [f"{p}{i:09d}" for i in range(n - both - 2 * pair)]
        out[p] = (
            shared
            + [f"{p}{nxt}{k:09d}" for k in range(pair)]
            + [f"{prv}{p}{k:09d}" for k in range(pair)]
            + mine
        )
    return out


def ring(n: int) -> dict[str, float]:
    ids = holdings(n)
    started = time.perf_counter()
    keyed = {p: keyed_identifiers(ids[p], KEY) for p in PARTIES}
    keying = (time.perf_counter() - started) / len(PARTIES)
    secrets = {p: Blinder.fresh() for p in PARTIES}
    seal = SealKey.fresh()
    phases: dict[str, float] = {}
    moved = 0
    lists = {}
    slowest = 0.0
    for p in PARTIES:
        t = time.perf_counter()
        lists[p] = secrets[p].blind([keyed[p]], n, ["all"])
        slowest = max(slowest, time.perf_counter() - t)
        moved += len(lists[p])
    phases["blind"] = slowest
    for hop in (1, 2):
        slowest = 0.0
        for applier, owner in ring_sources(PARTIES, hop).items():
            t = time.perf_counter()
            out = secrets[applier].reblind(lists[owner], 1, n)
            if hop == 2:
                out = sealed_for(seal.public, out)
            slowest = max(slowest, time.perf_counter() - t)
            moved += 2 * len(lists[owner]) if hop == 1 else len(lists[owner]) + len(out)
            lists[owner] = out
        phases[f"hop{hop}"] = slowest
    moved += sum(len(v) for v in lists.values())  # down to the counter
    t = time.perf_counter()
    counts = pattern_counts([seal.open(lists[p]) for p in PARTIES], 1, n)
    phases["count"] = time.perf_counter() - t
    assert int(counts[0, -1]) == n // 10  # every resident known to all three found
    return {**phases, "total": sum(phases.values()), "keying": keying, "bytes": moved * 4 / 3}


def main() -> None:
    sizes = [10_000, 100_000] + ([1_000_000] if "--full" in sys.argv else [])
    print("overlap ring, 3 agencies, one area (privacy.psi over PyNaCl/libsodium edwards25519)")
    print(
        f"{'ids/agency':>11} {'blind s':>8} {'hop1 s':>7} {'hop2 s':>7} {'count s':>8} {'run s':>7} "
        f"{'x keying':>9} {'MB moved':>9} {'B/id':>6}"
    )
    previous: dict[str, float] | None = None
    for n in sizes:
        r = ring(n)
        print(
            f"{n:>11,} {r['blind']:>8.2f} {r['hop1']:>7.2f} {r['hop2']:>7.2f} {r['count']:>8.2f} {r['total']:>7.2f} "
            f"{r['total'] / r['keying']:>9.0f} {r['bytes'] / 1e6:>9.2f} {r['bytes'] / n:>6.1f}"
        )
        if previous is not None:
            print(
                f"{'':>11} growth x{r['total'] / previous['total']:.1f} in time, x{r['bytes'] / previous['bytes']:.1f} "
                f"in bytes for x{n / previous['n']:.0f} identifiers"
            )
        previous = {**r, "n": n}
    print("run s: the critical path (agencies work in parallel); bytes: every relay through the coordinator")


if __name__ == "__main__":
    main()
