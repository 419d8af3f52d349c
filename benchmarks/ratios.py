"""Print, per benchmark group, each row's median and its ratio to a reference row.

    python benchmarks/ratios.py RESULTS.json [--reference original]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def table(results: dict, reference: str) -> dict:
    groups: dict = defaultdict(dict)
    for bench in results["benchmarks"]:
        name = bench["extra_info"].get("model") or bench["param"]
        groups[bench["group"]][name] = bench["stats"]["median"]
    return {
        group: [(name, t, rows[reference] / t if reference in rows else None) for name, t in sorted(rows.items(), key=lambda r: r[1])]
        for group, rows in sorted(groups.items())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("--reference", default="original", help="row the speed-ups are relative to")
    args = parser.parse_args()
    with open(args.results) as f:
        groups = table(json.load(f), args.reference)
    for group, rows in groups.items():
        print(group)
        for name, t, speedup in rows:
            ratio = f"{speedup:6.2f}x vs {args.reference}" if speedup else ""
            print(f"  {name:24s} {t * 1e3:10.1f} ms  {ratio}")


if __name__ == "__main__":
    main()
