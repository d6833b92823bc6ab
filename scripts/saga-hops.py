#!/usr/bin/env python3
"""Where a saga's time goes, hop by hop — from the databases a bench run kept.

    sagaflow bench --rate 100 --duration 40 --keep-databases     # databases bench_<tag>_*
    scripts/saga-hops.py 'postgres://user@host/?host=/sock' <tag> [--last SECONDS]

Every step of an approved saga leaves a time in some database: the order row
(`orders.created_at`), each outbox row's insert and broker acknowledgement (`created_at`,
`published_at`: a relay hop), and each transition of the orchestrator (`saga_history.at`:
a consumer hop). This prints the percentiles of each hop over the sagas whose order was
placed in the last `--last` seconds of the run (all by default), the hops of the slowest 5 %
of sagas, and the seconds in which those slow sagas started — slow sagas bunched in a few
seconds point at a stall (a relay's housekeeping, autovacuum), spread evenly at a hop that is
slow throughout. All databases must be on one server: the times come from one clock.
Needs `psql`.
"""
import argparse
import collections
import csv
import io
import statistics
import subprocess
import urllib.parse

# The times an approved saga leaves, in order: "<type>.c" an outbox insert, "<type>.p" its
# broker ack, "h.<state>" an orchestrator transition.
STEPS = [
    "order placed",
    "OrderPlaced.c", "OrderPlaced.p", "h.RESERVING_STOCK",
    "ReserveStock.p", "StockReserved.c", "StockReserved.p", "h.AUTHORIZING_PAYMENT",
    "AuthorizePayment.p", "PaymentAuthorized.c", "PaymentAuthorized.p", "h.APPROVING",
    "ApproveOrder.p", "OrderApproved.c", "OrderApproved.p", "h.APPROVED",
]
OUTBOXES = ["order", "inventory", "payment", "saga"]


def rows(server, tag, database, sql):
    url = urllib.parse.urlsplit(server)
    url = url._replace(path=f"/bench_{tag}_{database}").geturl()
    out = subprocess.run(
        ["psql", url, "-AtF,", "-c", sql], check=True, capture_output=True, text=True
    ).stdout
    return list(csv.reader(io.StringIO(out)))


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("server", help="PostgreSQL URL of the server the bench ran on")
    parser.add_argument("tag", help="the <tag> of the kept databases bench_<tag>_*")
    parser.add_argument("--last", type=float, help="only sagas placed in the run's last SECONDS")
    args = parser.parse_args()

    times = collections.defaultdict(dict)
    since = (
        f"WHERE created_at > (SELECT max(created_at) - make_interval(secs => {args.last}) FROM orders)"
        if args.last
        else ""
    )
    for order_id, at in rows(args.server, args.tag, "order",
                             f"SELECT id, extract(epoch FROM created_at) FROM orders {since}"):
        times[order_id]["order placed"] = float(at)
    for database in OUTBOXES:
        for key, kind, created, published in rows(
            args.server, args.tag, database,
            "SELECT msg_key, message_type, extract(epoch FROM created_at),"
            " extract(epoch FROM published_at) FROM outbox",
        ):
            if key in times:
                times[key][kind + ".c"] = float(created)
                if published:
                    times[key][kind + ".p"] = float(published)
    for order_id, state, at in rows(args.server, args.tag, "saga",
                                    "SELECT order_id, to_state, extract(epoch FROM at) FROM saga_history"):
        if order_id in times:
            times[order_id]["h." + state] = float(at)

    sagas = [t for t in times.values() if all(step in t for step in STEPS)]
    if not sagas:
        raise SystemExit("no approved saga with every hop recorded")
    total = [(s["h.APPROVED"] - s["order placed"]) * 1000 for s in sagas]
    slow_from = percentile(total, 0.95)
    slow = [s for s, t in zip(sagas, total) if t >= slow_from]
    print(f"{len(sagas)} approved sagas: p50 {percentile(total, .5):.1f} ms, "
          f"p95 {percentile(total, .95):.1f}, p99 {percentile(total, .99):.1f}")
    print(f"{'hop (.c: outbox insert, .p: broker ack, h.: orchestrator)':<48} "
          f"{'p50':>6} {'p90':>6} {'p99':>6} {'mean':>6} | slowest 5 %: mean")
    for a, b in zip(STEPS, STEPS[1:]):
        hop = [(s[b] - s[a]) * 1000 for s in sagas]
        slow_hop = [(s[b] - s[a]) * 1000 for s in slow]
        print(f"{a + ' -> ' + b:<48} {percentile(hop, .5):6.1f} {percentile(hop, .9):6.1f} "
              f"{percentile(hop, .99):6.1f} {statistics.mean(hop):6.1f} | {statistics.mean(slow_hop):6.1f}")
    start = min(s["order placed"] for s in sagas)
    by_second = collections.Counter(int(s["order placed"] - start) for s in slow)
    print("slowest 5 % by the second they started in:",
          " ".join(f"{second}s:{n}" for second, n in sorted(by_second.items())))


if __name__ == "__main__":
    main()
