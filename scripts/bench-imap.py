#!/usr/bin/env python3
"""IMAP load driver for scripts/bench-imap: the same workload against each server, in turn.

usage: bench-imap.py [--clients C] [--fetches F] [--stores S] [--repeat R]
                    [--scale] [--rss NAME=PID] NAME=HOST:PORT:USER:PASS ...

Per server: first the SELECT time of INBOX (median of 5, one client, after a warm-up
session), then C client processes at once, each: LOGIN, SELECT INBOX, FETCH 1:* (FLAGS),
F x FETCH n (ENVELOPE BODY[]) (n from a fixed seed, the same for every server), SEARCH TEXT,
S x STORE n +FLAGS/-FLAGS (\\Flagged), LOGOUT. Prints ops/s (all operations of all clients
over the wall time) and p50/p95 per operation, servers side by side; with --repeat R, the
servers take turns R times and every figure is the median of the R runs.

--scale (for a large folder, e.g. 100,000 messages): one client per server, after a setup
that is not timed (\\Seen on the first 90 % of the messages, \\Flagged on every 100th), the
servers taking turns R times: SELECT INBOX, FETCH 1:* (FLAGS), UID SEARCH UNSEEN / FLAGGED /
SINCE, and FETCH n (BODY[]) of 20 messages (median of them); every row side by side with the
ratio to the last server named (the baseline). --rss NAME=PID also prints that server's
resident set with 1 and with 10 sessions SELECTed on the folder (the memory per session).
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


SCALE_ROWS = ["select", "fetch_flags", "search_unseen", "search_flagged", "search_since",
              "fetch_body"]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def scale_setup(spec):
    m, user, pw = connect(spec)
    m.login(user, pw)
    n = int(m.select("INBOX")[1][0])
    seen_to = n * 9 // 10
    if seen_to:
        m.store("1:%d" % seen_to, "+FLAGS.SILENT", "(\\Seen)")
    flagged = ",".join(str(i) for i in range(1, n + 1, 100))
    if flagged:
        m.store(flagged, "+FLAGS.SILENT", "(\\Flagged)")
    m.logout()
    return n


def scale_run(spec, n):
    m, user, pw = connect(spec)
    m.login(user, pw)
    m.select("INBOX")
    out = {}

    def timed(name, f, check=None):
        t = time.perf_counter()
        typ, data = f()
        out[name] = time.perf_counter() - t
        if typ != "OK":
            raise RuntimeError("%s: %r" % (name, data[:1]))
        return data

    timed("select", lambda: m.select("INBOX"))
    data = timed("fetch_flags", lambda: m.fetch("1:*", "(FLAGS)"))
    assert len(data) >= n, (len(data), n)
    data = timed("search_unseen", lambda: m.uid("SEARCH", "UNSEEN"))
    out["n_unseen"] = len(data[0].split())
    data = timed("search_flagged", lambda: m.uid("SEARCH", "FLAGGED"))
    out["n_flagged"] = len(data[0].split())
    data = timed("search_since", lambda: m.uid("SEARCH", "SINCE", "1-Jan-2020"))
    out["n_since"] = len(data[0].split())
    rnd = random.Random(7)
    bodies = []
    for _ in range(20):
        i = rnd.randint(1, n)
        t = time.perf_counter()
        typ, data = m.fetch(str(i), "(BODY.PEEK[])")
        bodies.append(time.perf_counter() - t)
        assert typ == "OK" and isinstance(data[0], tuple), data
    out["fetch_body"] = statistics.median(bodies)
    m.logout()
    return out


def sessions_rss(spec, pid):
    """RSS (KiB) of `pid` with 1 and with 10 sessions that have SELECTed INBOX."""
    held = []
    res = {}
    for k in range(10):
        m, user, pw = connect(spec)
        m.login(user, pw)
        m.select("INBOX")
        held.append(m)
        if k == 0:
            time.sleep(0.5)
            res[1] = rss_kib(pid)
    time.sleep(0.5)
    res[10] = rss_kib(pid)
    for m in held:
        m.logout()
    return res


def scale_main(a):
    specs = {}
    for s in a.servers:
        name, rest = s.split("=", 1)
        specs[name] = rest.split(":", 3)
    pids = dict((r.split("=", 1)[0], int(r.split("=", 1)[1])) for r in a.rss)
    counts = {name: scale_setup(spec) for name, spec in specs.items()}
    runs = {name: [] for name in specs}
    for _ in range(a.repeat):
        for name, spec in specs.items():
            runs[name].append(scale_run(spec, counts[name]))
    names = list(specs)
    base = names[-1]
    med = lambda n, k: statistics.median(r[k] for r in runs[n])
    print("one client on a folder of %s messages (\\Seen on 90 %%, \\Flagged on 1 %%); medians of "
          "%d runs, ms; ratio = time / %s's time" % (
              "/".join(str(counts[n]) for n in names), a.repeat, base))
    print("%-28s" % "" + "".join("%14s" % n for n in names) + "%10s" % "ratio")
    labels = {"select": "SELECT INBOX", "fetch_flags": "FETCH 1:* (FLAGS)",
              "search_unseen": "UID SEARCH UNSEEN", "search_flagged": "UID SEARCH FLAGGED",
              "search_since": "UID SEARCH SINCE", "fetch_body": "FETCH n (BODY[]), median of 20"}
    for row in SCALE_ROWS:
        cells = "".join("%14.1f" % (med(n, row) * 1e3) for n in names)
        ratios = " ".join("%.2f" % (med(n, row) / med(base, row)) for n in names[:-1])
        print("%-28s" % labels[row] + cells + "%10s" % ratios)
    for k in ("n_unseen", "n_flagged", "n_since"):
        print("%-28s" % ("  hits " + k[2:]) + "".join("%14d" % med(n, k) for n in names))
    for name, pid in pids.items():
        r = sessions_rss(specs[name], pid)
        print("%s RSS: 1 session SELECTed %.1f MiB, 10 sessions %.1f MiB: %.2f MiB per further "
              "session" % (name, r[1] / 1024, r[10] / 1024, (r[10] - r[1]) / 1024 / 9))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--fetches", type=int, default=200)
    ap.add_argument("--stores", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--rss", action="append", default=[], metavar="NAME=PID")
    ap.add_argument("servers", nargs="+")
    a = ap.parse_args()
    if a.scale:
        return scale_main(a)
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
