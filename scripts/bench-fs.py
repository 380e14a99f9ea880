#!/usr/bin/env python3
"""The FUSE Maildir's benchmark driver (issue #4's items a, b, c), run by scripts/bench-fs.

  bench-fs.py deliver ROOT N FSYNC        create in tmp/, write 4 KiB, [fsync,] rename to new/
  bench-fs.py roundtrip ROOT N            N pwrites of 4 KiB to a tmp/ file (one request each)
  bench-fs.py scan ROOT/cur               readdir + lstat of every entry
  bench-fs.py read ROOT/.Read10k/cur      read every message
  bench-fs.py populate DIR N_BIG N_READ   a Maildir: N_BIG in cur/, N_READ in .Read10k/cur/

Each measuring command prints one JSON object: {"seconds": .., "count": .., "bytes": ..}.
"""
import json
import os
import sys
import time

BODY = (b"From: bench@example.org\nTo: you@example.org\nSubject: bench\n\n" + b"x" * 4096)[:4096]


def deliver(root, n, do_fsync, tag):
    for d in ("cur", "new", "tmp"):
        os.makedirs(f"{root}/{d}", exist_ok=True)
    pid = os.getpid()
    # do_fsync 2: the file and then new/ (the rename durable too: Maildir's full contract).
    dfd = os.open(f"{root}/new", os.O_RDONLY | os.O_DIRECTORY) if do_fsync == 2 else None
    t0 = time.perf_counter()
    for i in range(n):
        name = f"{int(time.time())}.M{i}P{pid}{tag}.bench"
        tmp = f"{root}/tmp/{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, BODY)
            if do_fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, f"{root}/new/{name}")
        if dfd is not None:
            os.fsync(dfd)
    seconds = time.perf_counter() - t0
    if dfd is not None:
        os.close(dfd)
    return {"seconds": seconds, "count": n, "bytes": n * len(BODY)}


def roundtrip(root, n):
    """n pwrites of 4 KiB at offset 0 to one tmp/ file: on a FUSE mount each is one WRITE
    request, so this is the cost of a kernel round trip (a delivery needs 8 or more)."""
    os.makedirs(f"{root}/tmp", exist_ok=True)
    fd = os.open(f"{root}/tmp/roundtrip", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            os.pwrite(fd, BODY, 0)
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(f"{root}/tmp/roundtrip")
    return {"seconds": seconds, "count": n, "bytes": n * len(BODY)}


def scan(d):
    t0 = time.perf_counter()
    n = 0
    with os.scandir(d) as it:
        for e in it:
            e.stat(follow_symlinks=False)
            n += 1
    return {"seconds": time.perf_counter() - t0, "count": n, "bytes": 0}


def read_all(d):
    """Reads each file whole with open(2), read(2) and close(2), as a mail reader (cat,
    Dovecot, mutt) does. Not Python's open(): it asks every file whether it is a terminal
    (ioctl TCGETS), which a FUSE mount must forward to its daemon, one more round trip per
    file that no mail reader makes."""
    t0 = time.perf_counter()
    n = total = 0
    for name in os.listdir(d):
        fd = os.open(f"{d}/{name}", os.O_RDONLY)
        try:
            while True:
                b = os.read(fd, 1 << 16)
                if not b:
                    break
                total += len(b)
        finally:
            os.close(fd)
        n += 1
    return {"seconds": time.perf_counter() - t0, "count": n, "bytes": total}


def populate(d, n_big, n_read):
    for sub in ("", ".Read10k"):
        for x in ("cur", "new", "tmp"):
            os.makedirs(f"{d}/{sub}/{x}" if sub else f"{d}/{x}", exist_ok=True)
    base = 1700000000
    for i in range(n_big):
        p = f"{d}/cur/{base + i}.M{i}P1.bench:2,S"
        with open(p, "wb") as f:
            f.write(BODY)
        os.utime(p, (base + i, base + i))
    for i in range(n_read):
        p = f"{d}/.Read10k/cur/{base + i}.M{i}P2.bench:2,"
        with open(p, "wb") as f:
            f.write(BODY)
        os.utime(p, (base + i, base + i))


def main():
    cmd = sys.argv[1]
    if cmd == "deliver":
        r = deliver(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "")
    elif cmd == "roundtrip":
        r = roundtrip(sys.argv[2], int(sys.argv[3]))
    elif cmd == "scan":
        r = scan(sys.argv[2])
    elif cmd == "read":
        r = read_all(sys.argv[2])
    elif cmd == "populate":
        populate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    else:
        sys.exit(f"unknown command {cmd}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
