"""Plot the scaling studies: time and peak memory against hidden size, log-log, one line per
model / gate / path (and connections per unit), one row of panels per benchmark group. The memory is
each benchmark's ``peak_mib``: on CPU the peak RSS of a fresh process that builds and runs the model
(benchmarks/peak_memory.py), on CUDA the memory a call adds.

    python benchmarks/plot.py RESULTS.json [MORE.json ...] -o FILE.png [--groups construction scaling-train-cpu]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def series(benchmarks: list[dict]) -> dict:
    """{group: {line label: [(hidden, median seconds, peak MiB or None), ...]}} for rows with a size."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for bench in benchmarks:
        info = bench["extra_info"]
        if "hidden" not in info or bench["group"] == "radius":
            continue
        name = str(info.get("model") or bench["param"])
        if "per_unit" in info:
            name += f", {info['per_unit']:g}/unit"
        out[bench["group"]][name].append((info["hidden"], bench["stats"]["median"], info.get("peak_mib")))
    return out


def plot(groups: dict, path: str) -> None:
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 3.6 * len(groups)), squeeze=False)
    for row, (group, lines) in enumerate(sorted(groups.items())):
        time_ax, memory_ax = axes[row]
        for name, points in sorted(lines.items()):
            points.sort()
            hidden = [p[0] for p in points]
            time_ax.plot(hidden, [p[1] for p in points], marker="o", label=name)
            memory = [(h, p[2]) for h, p in zip(hidden, points, strict=True) if p[2] is not None and p[2] > 0]
            if memory:
                memory_ax.plot(*zip(*memory, strict=True), marker="o", label=name)
        time_ax.set(xscale="log", yscale="log", xlabel="hidden size H", ylabel="median time (s)", title=group)
        memory_ax.set(
            xscale="log", yscale="log", xlabel="hidden size H", ylabel="peak memory (MiB)", title=f"{group}: memory"
        )
        for ax in (time_ax, memory_ax):
            ax.grid(True, which="both", alpha=0.3)
        time_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON files")
    parser.add_argument("-o", "--output", required=True, help="image file to write (e.g. scaling.png)")
    parser.add_argument("--groups", nargs="*", help="only these benchmark groups")
    args = parser.parse_args()
    benchmarks = []
    for name in args.results:
        with open(name) as f:
            benchmarks.extend(json.load(f)["benchmarks"])
    groups = series(benchmarks)
    if args.groups:
        groups = {g: groups[g] for g in args.groups if g in groups}
    if not groups:
        raise SystemExit("plot.py: no benchmark with a hidden size in these results")
    plot(groups, args.output)
    print(f"wrote {args.output}: {', '.join(sorted(groups))}")


if __name__ == "__main__":
    main()
