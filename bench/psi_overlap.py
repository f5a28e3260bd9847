"""Time and bytes of one PSI-cardinality exchange (`privacy.psi`) between two agencies.

For 10k and 100k identifiers per agency (and 1M with `--full`, about 20 minutes on 2 cores),
half of them shared: the holder's setup, the requester's request, the holder's response and the
requester's count, each timed once in this process, with the bytes each message puts on the
wire (relayed through the coordinator, so each crosses two links), and how both grow from one
size to the next. The baseline in the same process is keying the identifiers (HMAC-SHA256),
which any linkage must do. Prints figures; asserts nothing.
"""

from __future__ import annotations

import sys
import time

from privacy.psi import OverlapHolder, OverlapRequester, keyed_identifiers

KEY = b"partnership-linkage-key-32-bytes"


def exchange(n: int) -> dict[str, float]:
    ids_a = [f"RES{i:09d}X" for i in range(n)]
    ids_b = [f"RES{i:09d}X" for i in range(n // 2, n // 2 + n)]
    started = time.perf_counter()
    a, b = keyed_identifiers(ids_a, KEY), keyed_identifiers(ids_b, KEY)
    keyed = time.perf_counter() - started
    requester, holder = OverlapRequester({"all": a}), OverlapHolder({"all": b})
    t0 = time.perf_counter()
    setup = holder.setup(n)
    t1 = time.perf_counter()
    request = requester.request()
    t2 = time.perf_counter()
    response = holder.respond(request)
    t3 = time.perf_counter()
    (size,) = requester.sizes(setup, response)
    t4 = time.perf_counter()
    assert size >= n // 2  # a false positive may add one in a billion per item
    moved = sum(len(m["all"]) for m in (setup, request, response))
    return {
        "keying": keyed,
        "setup": t1 - t0,
        "request": t2 - t1,
        "response": t3 - t2,
        "count": t4 - t3,
        "total": t4 - t0,
        "setup_bytes": len(setup["all"]),
        "request_bytes": len(request["all"]),
        "response_bytes": len(response["all"]),
        "bytes": moved,
    }


def main() -> None:
    sizes = [10_000, 100_000] + ([1_000_000] if "--full" in sys.argv else [])
    print("PSI cardinality, one area, half the identifiers shared (privacy.psi over openmined-psi 2.0.6)")
    print(
        f"{'ids/agency':>11} {'setup s':>8} {'request s':>9} {'response s':>10} {'count s':>8} {'total s':>8} "
        f"{'x keying':>9} {'MB moved':>9} {'B/id':>6}"
    )
    previous: dict[str, float] | None = None
    for n in sizes:
        r = exchange(n)
        print(
            f"{n:>11,} {r['setup']:>8.2f} {r['request']:>9.2f} {r['response']:>10.2f} {r['count']:>8.2f} "
            f"{r['total']:>8.2f} {r['total'] / r['keying']:>9.0f} {r['bytes'] / 1e6:>9.2f} {r['bytes'] / n:>6.1f}"
        )
        if previous is not None:
            print(
                f"{'':>11} growth x{r['total'] / previous['total']:.1f} in time, x{r['bytes'] / previous['bytes']:.1f} "
                f"in bytes for x{n / previous['n']:.0f} identifiers"
            )
        previous = {**r, "n": n}
    print("each message crosses two links (partner -> coordinator -> partner); double the bytes for the wire")


if __name__ == "__main__":
    main()
