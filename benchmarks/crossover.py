"""Read a pytest-benchmark JSON of test_recurrent_product.py and print, per device, batch and size,
the median time of each path and the highest measured density at which the sparse path still wins.

    python benchmarks/crossover.py RESULTS.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def crossover(results: dict) -> dict:
    """{(device, batch, hidden): [(density, dense_s, sparse_s), ...]} from a benchmark JSON."""
    table: dict = defaultdict(dict)
    for bench in results["benchmarks"]:
        info = bench["extra_info"]
        if "path" not in info or "density" not in info:
            continue
        key = (info["device"], info["batch"], info["hidden"])
        table[key].setdefault(info["density"], {})[info["path"]] = bench["stats"]["median"]
    return {
        key: sorted((d, t.get("dense"), t.get("sparse")) for d, t in rows.items())
        for key, rows in sorted(table.items())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="pytest-benchmark JSON file")
    args = parser.parse_args()
    with open(args.results) as f:
        rows = crossover(json.load(f))
    for (device, batch, hidden), points in rows.items():
        wins = [d for d, dense, sparse in points if dense is not None and sparse is not None and sparse < dense]
        cells = "  ".join(
            f"d={d:g}: {dense * 1e6:7.1f}/{sparse * 1e6:7.1f}us" if dense and sparse else f"d={d:g}: -"
            for d, dense, sparse in points
        )
        best = f"sparse wins up to d={max(wins):g}" if wins else "dense always wins"
        print(f"{device:4s} B={batch:<4d} H={hidden:<5d} {best:26s} (dense/sparse) {cells}")


if __name__ == "__main__":
    main()
