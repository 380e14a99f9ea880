#!/usr/bin/env python3
"""An IMAP workload for benchmarks: CLIENTS concurrent clients (processes), each doing

    LOGIN, SELECT INBOX, FETCH 1:* (FLAGS), ROUNDS x FETCH n (ENVELOPE BODY.PEEK[]) of random
    messages, SEARCH TEXT <word>, STOREs x STORE n +FLAGS (\\Flagged) / -FLAGS, LOGOUT

against one server, and prints one JSON object: commands, seconds (wall, all clients),
commands_per_s, and per command kind the count, p50 and p95 in milliseconds.

  imap-workload.py HOST PORT USER PASS [--clients 10] [--rounds 200] [--stores 100]
                   [--search WORD] [--seed 1]

Every reply is checked (a NO/BAD or a missing message fails the run, exit status 1), so a
server that answers fast but wrong cannot win.
"""
import argparse
import imaplib
import json
import multiprocessing
import random
import statistics
import sys
import time


def client(args, idx, out):
    rnd = random.Random(args.seed * 1000 + idx)
    lat = {}

    def timed(kind, fn, *a):
        t0 = time.perf_counter()
        typ, data = fn(*a)
        lat.setdefault(kind, []).append(time.perf_counter() - t0)
        if typ != "OK":
            raise RuntimeError(f"{kind}: {typ} {data!r}")
        return data

    try:
        t0 = time.perf_counter()
        m = imaplib.IMAP4(args.host, args.port)
        m.login(args.user, args.password)
        lat.setdefault("LOGIN", []).append(time.perf_counter() - t0)
        data = timed("SELECT", m.select, "INBOX")
        n = int(data[0])
        if n == 0:
            raise RuntimeError("INBOX is empty")
        data = timed("FETCH 1:* FLAGS", m.fetch, "1:*", "(FLAGS)")
        if sum(1 for d in data if d) < n:
            raise RuntimeError(f"FETCH 1:* answered {len(data)} of {n}")
        for _ in range(args.rounds):
            i = rnd.randint(1, n)
            data = timed("FETCH ENVELOPE BODY[]", m.fetch, str(i), "(ENVELOPE BODY.PEEK[])")
            if not data or not isinstance(data[0], tuple) or len(data[0][1]) == 0:
                raise RuntimeError(f"FETCH {i}: no body: {data!r:.200}")
        timed("SEARCH TEXT", m.search, None, "TEXT", args.search)
        for k in range(args.stores):
            i = rnd.randint(1, n)
            op = "+FLAGS" if k % 2 == 0 else "-FLAGS"
            timed("STORE", m.store, str(i), op, "(\\Flagged)")
        t0 = time.perf_counter()
        m.logout()
        lat.setdefault("LOGOUT", []).append(time.perf_counter() - t0)
        out.put(("ok", lat))
    except Exception as e:  # reported by the parent
        out.put(("error", f"client {idx}: {e}"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--stores", type=int, default=100)
    p.add_argument("--search", default="zulu")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    q = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(args, i, q)) for i in range(args.clients)]
    t0 = time.perf_counter()
    for pr in procs:
        pr.start()
    results = [q.get() for _ in procs]
    wall = time.perf_counter() - t0
    for pr in procs:
        pr.join()
    errors = [r[1] for r in results if r[0] != "ok"]
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    merged = {}
    for _, lat in results:
        for k, v in lat.items():
            merged.setdefault(k, []).extend(v)
    total = sum(len(v) for v in merged.values())
    kinds = {}
    for k, v in merged.items():
        v.sort()
        kinds[k] = {
            "count": len(v),
            "p50_ms": statistics.median(v) * 1000,
            "p95_ms": v[min(len(v) - 1, int(len(v) * 0.95))] * 1000,
        }
    print(json.dumps({"commands": total, "seconds": wall, "commands_per_s": total / wall, "kinds": kinds}))


if __name__ == "__main__":
    main()
