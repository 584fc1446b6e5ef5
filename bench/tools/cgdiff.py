#!/usr/bin/env python3
"""Per-request, per-function instruction counts of two configurations, and
their difference: what one costs over the other, function by function.

Reads the files `clientgone-bench instructions --keep DIR` leaves
(`callgrind.CONFIG.ROUTE.N`), subtracts each configuration's short run from
its long one (start-up and warm-up cancel) and divides by the requests
between them.

    bench/tools/cgdiff.py DIR bare metrics hello 5000 9000 4000 [--inclusive] [--top 60]

Columns: B − A, A, B (instructions per request), function. Needs
callgrind_annotate (valgrind).
"""
import argparse
import collections
import re
import subprocess

LINE = re.compile(r"\s*([\d,]+) \([ \d.]+%\)\s+(.*)$")


def functions(path, inclusive):
    args = ["callgrind_annotate", "--threshold=100", "--auto=no"]
    if inclusive:
        args.append("--inclusive=yes")
    out = subprocess.run(args + [path], capture_output=True, text=True, check=True).stdout
    counts = collections.Counter()
    for line in out.splitlines():
        m = LINE.match(line)
        if not m or "PROGRAM TOTALS" in m.group(2):
            continue
        name = re.sub(r" \[.*\]$", "", m.group(2))
        name = name.split(":", 1)[-1] if ":" in name else name
        counts[name] += int(m.group(1).replace(",", ""))
    return counts


def per_request(args, config):
    base = f"{args.dir}/callgrind.{config}.{args.route}"
    short = functions(f"{base}.{args.short}", args.inclusive)
    long = functions(f"{base}.{args.long}", args.inclusive)
    return {k: (long[k] - short[k]) / args.requests for k in set(short) | set(long)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("a", help="configuration file name, e.g. bare")
    p.add_argument("b", help="configuration file name, e.g. metrics or proxy-clientgone")
    p.add_argument("route", help="hello or json")
    p.add_argument("short", type=int, help="requests of the short run (warm-up + N)")
    p.add_argument("long", type=int, help="requests of the long run (warm-up + 2N)")
    p.add_argument("requests", type=int, help="N")
    p.add_argument("--inclusive", action="store_true", help="count callees too")
    p.add_argument("--top", type=int, default=60)
    args = p.parse_args()
    a, b = per_request(args, args.a), per_request(args, args.b)
    print(f"total {args.a} {sum(a.values()):.0f}  {args.b} {sum(b.values()):.0f}")
    rows = sorted(((b.get(k, 0) - a.get(k, 0), a.get(k, 0), b.get(k, 0), k) for k in set(a) | set(b)),
                  key=lambda r: -abs(r[0]))
    for d, x, y, k in rows[: args.top]:
        print(f"{d:+8.0f} {x:8.0f} {y:8.0f}  {k[:160]}")


if __name__ == "__main__":
    main()
