#!/usr/bin/env python3
"""IMAP load driver for scripts/bench-imap: the same workload against each server, in turn.

usage: bench-imap.py [--clients C] [--fetches F] [--stores S] [--repeat R]
                    NAME=HOST:PORT:USER:PASS ...

Per server: first the SELECT time of INBOX (median of 5, one client, after a warm-up
session), then C client processes at once, each: LOGIN, SELECT INBOX, FETCH 1:* (FLAGS),
F x FETCH n (ENVELOPE BODY[]) (n from a fixed seed, the same for every server), SEARCH TEXT,
S x STORE n +FLAGS/-FLAGS (\\Flagged), LOGOUT. Prints ops/s (all operations of all clients
over the wall time) and p50/p95 per operation, servers side by side; with --repeat R, the
servers take turns R times and every figure is the median of the R runs.
"""
import argparse
import imaplib
import multiprocessing
import random
import statistics
import time

OPS = ["login", "select", "fetch_flags", "fetch_env_body", "search_text", "store", "logout"]


def connect(spec):
    host, port, user, pw = spec
    m = imaplib.IMAP4(host, int(port), timeout=300)
    return m, user, pw


def client(args):
    spec, seed, fetches, stores = args
    rnd = random.Random(seed)
    lat = {op: [] for op in OPS}

    def timed(op, f):
        t = time.perf_counter()
        r = f()
        lat[op].append(time.perf_counter() - t)
        if r[0] not in ("OK", "BYE" if op == "logout" else "OK"):
            raise RuntimeError("%s: %r" % (op, r))
        return r

    t = time.perf_counter()
    m, user, pw = connect(spec)
    m.login(user, pw)
    lat["login"].append(time.perf_counter() - t)
    n = int(timed("select", lambda: m.select("INBOX"))[1][0])
    typ, data = timed("fetch_flags", lambda: m.fetch("1:*", "(FLAGS)"))
    assert len(data) >= n, (len(data), n)  # others' changes may add unsolicited FETCHes
    for _ in range(fetches):
        i = rnd.randint(1, n)
        typ, data = timed("fetch_env_body", lambda: m.fetch(str(i), "(ENVELOPE BODY[])"))
        assert isinstance(data[0], tuple) and len(data[0][1]) > 0, (spec[1], i, typ, data)
    needle = '"harness-%d@example.org"' % rnd.randint(0, n - 1)
    typ, data = timed("search_text", lambda: m.search(None, "TEXT", needle))
    assert len(data[0].split()) == 1, data
    for k in range(stores):
        i = rnd.randint(1, n)
        op = "+FLAGS" if k % 2 == 0 else "-FLAGS"
        timed("store", lambda: m.store(str(i), op, "(\\Flagged)"))
    timed("logout", lambda: m.logout())
    return lat


def select_time(spec):
    m, user, pw = connect(spec)
    m.login(user, pw)
    m.select("INBOX")  # warm-up (Dovecot builds its index on the first one)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        m.select("INBOX")
        times.append(time.perf_counter() - t)
    m.logout()
    return statistics.median(times)


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def run(spec, clients, fetches, stores):
    sel = select_time(spec)
    with multiprocessing.Pool(clients) as pool:
        t = time.perf_counter()
        results = pool.map(client, [(spec, 1000 + c, fetches, stores) for c in range(clients)])
        wall = time.perf_counter() - t
    lat = {op: [x for r in results for x in r[op]] for op in OPS}
    total = sum(len(v) for v in lat.values())
    return {"select_10k": sel, "wall": wall, "ops": total, "ops_s": total / wall, "lat": lat}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--fetches", type=int, default=200)
    ap.add_argument("--stores", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("servers", nargs="+")
    a = ap.parse_args()
    runs = {}
    for _ in range(a.repeat):
        for s in a.servers:
            name, rest = s.split("=", 1)
            spec = rest.split(":", 3)
            runs.setdefault(name, []).append(run(spec, a.clients, a.fetches, a.stores))
    names = list(runs)
    med = lambda n, f: statistics.median(f(r) for r in runs[n])
    print("%d clients x (login, SELECT, FETCH 1:* FLAGS, %d x FETCH ENVELOPE BODY[], "
          "SEARCH TEXT, %d x STORE, logout); medians of %d runs"
          % (a.clients, a.fetches, a.stores, a.repeat))
    print("%-22s" % "" + "".join("%24s" % n for n in names))
    print("%-22s" % "ops/s (all clients)" + "".join("%24.0f" % med(n, lambda r: r["ops_s"]) for n in names))
    print("%-22s" % "wall time s" + "".join("%24.2f" % med(n, lambda r: r["wall"]) for n in names))
    print("%-22s" % "SELECT INBOX ms" + "".join("%24.1f" % (med(n, lambda r: r["select_10k"]) * 1e3) for n in names))
    for op in OPS:
        cells = "".join("%24s" % ("%.2f / %.2f" % (med(n, lambda r: pct(r["lat"][op], 50)) * 1e3,
                                                   med(n, lambda r: pct(r["lat"][op], 95)) * 1e3))
                        for n in names)
        print("%-22s" % (op + " p50/p95 ms") + cells)
    if len(names) == 2:
        a_, b_ = names
        print("ratio %s/%s ops/s: %.2f" % (a_, b_, med(a_, lambda r: r["ops_s"]) / med(b_, lambda r: r["ops_s"])))


if __name__ == "__main__":
    main()
