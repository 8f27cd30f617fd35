#!/usr/bin/env python3
"""Summarizes natgrad train's CSV logs (--log) into a Markdown table: for each run the training time and epochs
to given test accuracies (or test losses), the final test accuracy and loss, and the mean time per step; runs
given as label=path, several paths of one label (seeds) reported as medians.

    benchmarks/train_table.py --accuracy 0.85,0.88 adam=a1.csv,a2.csv,a3.csv kfac=k1.csv ...
    benchmarks/train_table.py --loss 80.5 adam=ae_adam.csv kfac=ae_kfac.csv

Times are the log's time_s: training time with evaluation excluded. Standard library only."""
import argparse
import csv
import statistics
import sys


def read(path):
    steps, evals = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            (steps if row["kind"] == "step" else evals).append(row)
    if not evals:
        sys.exit(f"{path}: no evaluation rows")
    return steps, evals


def first_reach(evals, key, target, above):
    for e in evals:
        v = e[key]
        if v and ((float(v) >= target) if above else (float(v) <= target)):
            return float(e["time_s"]), int(e["step"])
    return None


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accuracy", default="", help="comma-separated test accuracies to time")
    p.add_argument("--loss", default="", help="comma-separated test losses to time")
    p.add_argument("runs", nargs="+", help="label=path[,path...]")
    a = p.parse_args()
    targets = [("test_accuracy", float(t), True) for t in a.accuracy.split(",") if t] + \
              [("test_loss", float(t), False) for t in a.loss.split(",") if t]
    head = ["run", "seeds"]
    for key, t, _ in targets:
        name = f"{t:g}" if key == "test_loss" else f"{100 * t:g}%"
        head += [f"s to {name}", f"steps to {name}"]
    head += ["final test acc", "final test loss", "ms/step", "steps"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for spec in a.runs:
        label, _, paths = spec.partition("=")
        logs = [read(path) for path in paths.split(",")]
        cells = [label, str(len(logs))]
        for key, t, above in targets:
            hits = [first_reach(evals, key, t, above) for _, evals in logs]
            reached = [h for h in hits if h]
            med_s = median_or_none([h[0] if h else None for h in hits]) if len(reached) * 2 > len(hits) else None
            med_k = median_or_none([h[1] if h else None for h in hits]) if len(reached) * 2 > len(hits) else None
            cells += ["—" if med_s is None else f"{med_s:.1f}", "—" if med_k is None else f"{med_k:.0f}"]
            if len(reached) < len(hits):
                cells[-2] += f" ({len(reached)}/{len(hits)} reached)"
        finals = [evals[-1] for _, evals in logs]
        acc = median_or_none([float(e["test_accuracy"]) if e["test_accuracy"] else None for e in finals])
        loss = median_or_none([float(e["test_loss"]) if e["test_loss"] else None for e in finals])
        per_step = median_or_none([1000 * float(s[-1]["time_s"]) / len(s) if s else None for s, _ in logs])
        nsteps = median_or_none([len(s) for s, _ in logs])
        cells += ["—" if acc is None else f"{100 * acc:.2f}%", "—" if loss is None else f"{loss:.4f}",
                  "—" if per_step is None else f"{per_step:.1f}", f"{nsteps:.0f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
