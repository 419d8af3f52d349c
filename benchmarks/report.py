"""Read pytest-benchmark JSON files of this directory's studies and print their summaries:

- ratios: per group, each row's median and its speed-up over a reference row (``--reference``);
- crossover: per device, batch and size, where the CSR product beats the dense GEMM;
- radius: each method's error against the reference (dense eigenvalues or ARPACK at tol=1e-10);
- exponents: the slope of log(time) against log(nnz) of every line with a fixed density per unit.

    python benchmarks/report.py .results/*.json [--reference original]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict


def load(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or "benchmarks" not in data:  # e.g. the task runner's results
            print(f"report: skipping {path}: not a pytest-benchmark JSON file", file=sys.stderr)
            continue
        rows.extend(data["benchmarks"])
    return rows


def label(bench: dict) -> str:
    return str(bench["extra_info"].get("model") or bench["param"])


def ratios(rows: list[dict], reference: str) -> list[str]:
    groups: dict = defaultdict(dict)
    for bench in rows:
        if bench["group"].startswith("train-step") or bench["group"].startswith("forward-"):
            groups[bench["group"]][label(bench)] = bench["stats"]["median"]
    lines = []
    for group, times in sorted(groups.items()):
        lines.append(group)
        base = times.get(reference)
        for name, t in sorted(times.items(), key=lambda r: r[1]):
            speedup = f"{base / t:6.2f}x vs {reference}" if base else ""
            lines.append(f"  {name:28s} {t * 1e3:10.1f} ms  {speedup}")
    return lines


def crossover(rows: list[dict]) -> list[str]:
    table: dict = defaultdict(lambda: defaultdict(dict))
    for bench in rows:
        info = bench["extra_info"]
        if bench["group"].startswith("product-") and "density" in info:
            table[(info["device"], info["batch"], info["hidden"])][info["density"]][info["path"]] = bench["stats"][
                "median"
            ]
    lines = []
    for (device, batch, hidden), points in sorted(table.items()):
        both = [(d, t["dense"], t["sparse"]) for d, t in sorted(points.items()) if "dense" in t and "sparse" in t]
        wins = [d for d, dense, sparse in both if sparse < dense]
        verdict = f"sparse wins up to d={max(wins):g}" if wins else "dense always wins"
        cells = "  ".join(f"d={d:g}: {dense * 1e6:.1f}/{sparse * 1e6:.1f}us" for d, dense, sparse in both)
        lines.append(f"{device:4s} B={batch:<4d} H={hidden:<5d} {verdict:26s} (dense/sparse) {cells}")
    return lines


def radius(rows: list[dict]) -> list[str]:
    """Per method, matrix kind and size: the largest |error| against the reference, the methods that
    answered, the most products and seconds; and the reference's own time."""
    table: dict = defaultdict(list)
    reference_s: dict = {}
    for bench in rows:
        if bench["group"] == "radius":
            info = bench["extra_info"]
            key = (info["method"], info["kind"], info["n"])
            table[key].append((abs(info["rel_error"]), info["method_used"], info["products"], bench["stats"]["median"]))
            reference_s[(info["kind"], info["n"], info["parameter"])] = (info["reference_method"], info["reference_s"])
    lines = [f"{'method':7s} {'kind':8s} {'n':>7s} {'max |error|':>11s}  {'answered by':22s} {'products':>8s} seconds"]
    for (method, kind, n), found in sorted(table.items()):
        used = ", ".join(sorted({f[1] for f in found}))
        lines.append(
            f"{method:7s} {kind:8s} {n:7d} {max(f[0] for f in found):11.1e}  {used:22s} "
            f"{max(f[2] for f in found):8d} {max(f[3] for f in found):7.2f}"
        )
    lines += [
        f"reference {kind} n={n} ({parameter:g}): {how}, {seconds:.1f} s"
        for (kind, n, parameter), (how, seconds) in sorted(reference_s.items())
    ]
    return lines


def exponents(rows: list[dict]) -> list[str]:
    lines: dict = defaultdict(list)
    for bench in rows:
        info = bench["extra_info"]
        if "nnz" in info and "per_unit" in info and bench["group"] != "radius":
            key = (bench["group"], label(bench), info["per_unit"])
            lines[key].append((info["nnz"], bench["stats"]["median"]))
    out = []
    for (group, name, per_unit), points in sorted(lines.items()):
        if len(points) < 3:
            continue
        xs = [math.log(n) for n, _ in points]
        ys = [math.log(t) for _, t in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        lo, hi = min(points)[0], max(points)[0]
        out.append(f"{group:22s} {name:28s} {per_unit:>5g}/unit  time ~ nnz^{slope:.2f}  (nnz {lo:.1e} .. {hi:.1e})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON files")
    parser.add_argument("--reference", default="original", help="row the speed-ups are relative to")
    args = parser.parse_args()
    rows = load(args.results)
    for title, lines in (
        ("ratios", ratios(rows, args.reference)),
        ("crossover", crossover(rows)),
        ("radius", radius(rows)),
        ("exponents", exponents(rows)),
    ):
        if lines:
            print(f"== {title}")
            print("\n".join(lines))


if __name__ == "__main__":
    main()
