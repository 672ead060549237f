#!/usr/bin/env python3
"""The sweep of BENCHMARKS.md: how W1's cost grows with customers, offered event rate and
shard count. Runs `chorus-loadtest bench --json` once per point, keeps every report in
loadtest/sweep.json and draws loadtest/sweep.svg (no plotting library needed).

    cargo build --release -p chorus-node -p chorus-loadtest
    python3 loadtest/sweep.py                # run every point (about 6 minutes), then plot
    python3 loadtest/sweep.py --plot-only    # redraw the chart from loadtest/sweep.json
    python3 loadtest/sweep.py --only rate    # re-run one axis, keep the other points
"""

import argparse
import json
import math
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

# (axis, value, extra flags). The 64-shard, 100k-customer closed-loop point is shared by
# the customers and shards axes.
POINTS = [
    ("customers", 10_000, ["--customers", "10000"]),
    ("customers", 100_000, ["--customers", "100000"]),
    ("customers", 1_000_000, ["--customers", "1000000"]),
    ("shards", 1, ["--shards", "1"]),
    ("shards", 8, ["--shards", "8"]),
    ("rate", 2_000, ["--rate", "2000"]),
    ("rate", 4_000, ["--rate", "4000"]),
    ("rate", 8_000, ["--rate", "8000"]),
    ("rate", 16_000, ["--rate", "16000"]),
]
TITLES = {
    "customers": "Customers (64 shards, closed loop)",
    "shards": "Shards (100k customers, closed loop)",
    "rate": "Offered rate, ev/s (open loop, 64 shards)",
}


def run(args) -> list:
    exe = ROOT / "target" / "release" / "chorus-loadtest"
    if not exe.exists():
        sys.exit(f"{exe} is missing: cargo build --release -p chorus-node -p chorus-loadtest")
    results = []
    for axis, value, flags in POINTS:
        if args.only and axis != args.only:
            continue
        base = [] if "--shards" in flags else ["--shards", "64"]
        cmd = [str(exe), "bench", "--release"] + base + ["--warmup", str(args.warmup),
               "--duration", str(args.duration), "--json"] + flags
        print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if out.returncode not in (0, 2):
            sys.exit(f"chorus-loadtest failed ({out.returncode}):\n{out.stderr[-3000:]}")
        try:
            report = json.loads(out.stdout)
        except json.JSONDecodeError:
            sys.exit(f"no JSON report from chorus-loadtest ({out.returncode}):\n{out.stderr[-3000:]}")
        results.append({"axis": axis, "value": value, "command": " ".join(cmd[1:]), "report": report})
        r = report
        print(f"  {axis}={value}: {r['acked_events_per_s']:.0f} ev/s, p99 {r['ack_latency']['p99_ms']:.0f} ms",
              file=sys.stderr, flush=True)
        if axis == "customers" and value == 100_000:
            results.append({"axis": "shards", "value": 64, "command": " ".join(cmd[1:]), "report": report})
    return results


def nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def fmt(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1_000_000:g}M"
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def panel(x0: int, y0: int, w: int, h: int, axis: str, rows: list) -> str:
    """One chart: acknowledged ev/s (bars, left axis) and p99 ms (line, right axis)."""
    rows = sorted(rows, key=lambda r: r["value"])
    n = len(rows)
    rate = [r["report"]["acked_events_per_s"] for r in rows]
    p99 = [r["report"]["ack_latency"]["p99_ms"] for r in rows]
    cpu = [(r["report"].get("node") or {}).get("cpu_percent") for r in rows]
    rmax, lmax = nice_max(max(rate)), nice_max(max(p99))
    out = [f'<text x="{x0 + w / 2}" y="{y0 - 12}" text-anchor="middle" font-weight="bold">{TITLES[axis]}</text>',
           f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for i in range(5):
        y = y0 + h - h * i / 4
        out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + w}" y2="{y}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end" fill="#1f77b4">{fmt(rmax * i / 4)}</text>')
        out.append(f'<text x="{x0 + w + 6}" y="{y + 4}" fill="#d62728">{lmax * i / 4:g}</text>')
    slot = w / n
    pts = []
    for i, r in enumerate(rows):
        cx = x0 + slot * (i + 0.5)
        bh = h * rate[i] / rmax
        out.append(f'<rect x="{cx - slot * 0.3}" y="{y0 + h - bh}" width="{slot * 0.6}" height="{bh}" fill="#1f77b4" opacity="0.8"/>')
        out.append(f'<text x="{cx}" y="{y0 + h - bh - 4}" text-anchor="middle" font-size="11">{rate[i]:,.0f}</text>')
        if cpu[i] is not None:
            out.append(f'<text x="{cx}" y="{y0 + h - 6}" text-anchor="middle" font-size="10" fill="white">{cpu[i]:.0f}% cpu</text>')
        out.append(f'<text x="{cx}" y="{y0 + h + 16}" text-anchor="middle">{fmt(r["value"])}</text>')
        pts.append((cx, y0 + h - h * p99[i] / lmax))
    out.append('<polyline fill="none" stroke="#d62728" stroke-width="2" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
    for (x, y), v in zip(pts, p99):
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="#d62728"/>')
        out.append(f'<text x="{x + 6:.1f}" y="{y - 6:.1f}" font-size="11" fill="#d62728" stroke="white" stroke-width="3" paint-order="stroke">{v:,.0f} ms</text>')
    return "\n".join(out)


def plot(results: list, path: pathlib.Path) -> None:
    w, h, gap, top = 300, 260, 110, 60
    axes = ["customers", "shards", "rate"]
    width = 80 + len(axes) * (w + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + h + 90}" font-family="sans-serif" font-size="12">',
             f'<rect width="100%" height="100%" fill="white"/>',
             f'<text x="20" y="24" font-size="15" font-weight="bold">W1 on one node (2 vCPU): acknowledged events/s (bars, left) and p99 ack latency (line, right)</text>']
    for i, axis in enumerate(axes):
        rows = [r for r in results if r["axis"] == axis]
        if rows:
            parts.append(panel(70 + i * (w + gap), top, w, h, axis, rows))
    parts.append(f'<text x="20" y="{top + h + 60}" font-size="11" fill="#555">Data: loadtest/sweep.json (one chorus-loadtest bench --json report per point; commands inside). Bars: ack ev/s in the 15 s window; white labels: node CPU (100 % = one core).</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plot-only", action="store_true", help="redraw the chart from loadtest/sweep.json")
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--only", choices=sorted(TITLES), help="re-run one axis and replace its points in loadtest/sweep.json")
    args = ap.parse_args()
    data = HERE / "sweep.json"
    if args.plot_only:
        results = json.loads(data.read_text())
    else:
        results = run(args)
        if args.only and data.exists():
            fresh = {(r["axis"], r["value"]) for r in results}
            results = [r for r in json.loads(data.read_text()) if (r["axis"], r["value"]) not in fresh] + results
        data.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, HERE / "sweep.svg")
    print(f"wrote {HERE / 'sweep.svg'}", file=sys.stderr)


if __name__ == "__main__":
    main()
