#!/usr/bin/env python3
"""Drives scripts/dashboard-picture: a mail load on a ring of real nodes, then every panel
of the Grafana dashboard queried from a real Prometheus and drawn as Grafana draws it.

  dashboard-picture.py load NODES.json SECONDS      mail between the nodes, IMAP sessions,
                                                    reads of the mount (if one is listed)
  dashboard-picture.py render PROM_URL START END DASHBOARD.json OUT.png

NODES.json: [{"home", "address", "imap", "bin", "mount" (optional)}]. The password of every
node is "ring-password" (scripts/dashboard-picture makes them so).
"""

import imaplib
import json
import os
import random
import subprocess
import sys
import time
import urllib.parse
import urllib.request

PASSWORD = "ring-password"


def load(nodes_file, seconds):
    nodes = json.load(open(nodes_file))
    end = time.time() + seconds
    rnd = random.Random(7)
    sent = 0
    sessions = 0
    while time.time() < end:
        # A burst of mail (busier in the middle of the run, so the rates have a shape).
        phase = 1.0 - abs((end - time.time()) / seconds - 0.5) * 2
        for _ in range(1 + int(4 * phase)):
            a, b = rnd.sample(nodes, 2)
            body = "Subject: load %d\n\n%s\n" % (sent, "x" * rnd.randint(100, 20000))
            r = subprocess.run(
                [a["bin"], "--home", a["home"], "send", b["address"]],
                input=body.encode(),
                capture_output=True,
            )
            sent += r.returncode == 0
        # An IMAP session on a random node: the commands a client opens with.
        n = rnd.choice(nodes)
        try:
            c = imaplib.IMAP4("127.0.0.1", n["imap"], timeout=10)
            c.login(n["address"], PASSWORD)
            c.select("INBOX")
            c.fetch("1:*", "(FLAGS)")
            typ, data = c.search(None, "ALL")
            ids = data[0].split()
            if ids:
                c.fetch(rnd.choice(ids).decode(), "(BODY.PEEK[])")
                c.store(rnd.choice(ids).decode(), "+FLAGS", "(\\Seen)")
            c.noop()
            if rnd.random() < 0.2:
                c.send(b"x1 XYZZY\r\n")  # an invalid command, counted as such
                c.readline()
            c.logout()
            sessions += 1
        except Exception as e:  # a load generator goes on
            print("imap:", e, file=sys.stderr)
        # Mount readers (`run --mount`): list and read a few messages.
        for m in [x["mount"] for x in nodes if x.get("mount")]:
            for sub in ("new", "cur"):
                d = os.path.join(m, sub)
                try:
                    for name in sorted(os.listdir(d))[-5:]:
                        with open(os.path.join(d, name), "rb") as f:
                            f.read()
                except OSError as e:
                    print("mount:", e, file=sys.stderr)
        time.sleep(1.0)
    print(f"load: {sent} messages sent, {sessions} IMAP sessions")


def query_range(url, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{q}", timeout=30) as r:
        out = json.load(r)
    if out.get("status") != "success":
        raise RuntimeError(f"{expr}: {out}")
    return out["data"]["result"]


def legend(fmt, labels):
    text = fmt or "{{__name__}}"
    for k, v in labels.items():
        text = text.replace("{{" + k + "}}", v)
    while "{{" in text:  # a label the series lacks
        i = text.index("{{")
        j = text.index("}}", i)
        text = text[:i] + text[j + 2 :]
    return text.strip() or "value"


def scale(unit, values):
    """Grafana-like units: the factor and suffix for the y axis."""
    top = max([abs(v) for v in values] + [0])
    if unit in ("bytes", "Bps"):
        suffix = "/s" if unit == "Bps" else ""
        for f, s in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if top >= f:
                return f, s + suffix
        return 1, "B" + suffix
    if unit == "s":
        return (1e-3, "ms") if top < 1 else (1, "s")
    if unit == "percentunit":
        return 0.01, "%"
    if unit == "ops":
        return 1, "ops/s"
    return 1, ""


def render(url, start, end, dashboard, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from datetime import datetime, timezone

    start, end = float(start), float(end)
    d = json.load(open(dashboard))
    panels = [p for p in d["panels"] if p.get("type") == "timeseries"]
    rows = max((p["gridPos"]["y"] + p["gridPos"]["h"]) // 8 for p in panels)
    bg, panel_bg, fg, grid = "#111217", "#181b1f", "#ccccdc", "#2c3235"
    colors = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9",
              "#FADE2A", "#96D98D", "#FFB357", "#CA95E5", "#C0D8FF"]
    fig = plt.figure(figsize=(16, 2.9 * rows), facecolor=bg)
    fig.suptitle(f"{d['title']} — {len(panels)} panels of contrib/grafana/peerpost.json",
                 color=fg, fontsize=15, x=0.01, ha="left", y=0.997)
    step = max(5, int((end - start) / 200))
    empty = []
    for p in panels:
        g = p["gridPos"]
        ax = fig.add_axes([
            0.01 + (g["x"] / 24) * 0.98 + 0.03,
            1 - ((g["y"] + g["h"]) / (8 * rows)) * 0.985 + 0.025 / rows * 3,
            (g["w"] / 24) * 0.98 - 0.045,
            (g["h"] / (8 * rows)) * 0.985 - 0.11 / rows * 3,
        ], facecolor=panel_bg)
        ax.set_title(p["title"], color=fg, fontsize=10, loc="left")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        series = []
        for t in p["targets"]:
            expr = t["expr"].replace("$instance", ".*").replace("[5m]", "[1m]")
            for s in query_range(url, expr, start, end, step):
                pts = [(float(ts), float(v)) for ts, v in s["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if pts:
                    series.append((legend(t.get("legendFormat"), s["metric"]), pts))
        series.sort(key=lambda s: -max(v for _, v in s[1]))
        series = series[:8]  # a legend Grafana would also truncate
        f, suffix = scale(unit, [v for _, pts in series for _, v in pts])
        for i, (name, pts) in enumerate(series):
            xs = [datetime.fromtimestamp(ts, timezone.utc) for ts, _ in pts]
            ax.plot(xs, [v / f for _, v in pts], color=colors[i % len(colors)], lw=1.4, label=name)
            if len(series) <= 3:
                ax.fill_between(xs, [v / f for _, v in pts], color=colors[i % len(colors)], alpha=0.08)
        if not series:
            empty.append(p["title"])
            ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xlim(datetime.fromtimestamp(start, timezone.utc), datetime.fromtimestamp(end, timezone.utc))
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.tick_params(colors="#9fa7b3", labelsize=8)
        ax.set_ylabel(suffix, color="#9fa7b3", fontsize=8)
        ax.grid(color=grid, lw=0.6)
        for sp in ax.spines.values():
            sp.set_color(grid)
        if series:
            ax.legend(loc="upper left", fontsize=7, frameon=False, labelcolor=fg,
                      ncol=min(4, len(series)))
    fig.savefig(out, dpi=72, facecolor=bg)
    print(f"wrote {out}: {len(panels)} panels, {len(empty)} without data {empty}")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "load":
        load(sys.argv[2], float(sys.argv[3]))
    elif len(sys.argv) >= 2 and sys.argv[1] == "render":
        render(*sys.argv[2:7])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
