#!/usr/bin/env python3
"""Summarizes natgrad train's CSV logs (--log) into a Markdown table: for each run the training time and epochs
to given test accuracies (or test losses), the final test accuracy and loss, and the mean time per step; runs
given as label=path, several paths of one label (seeds) reported as medians.

    benchmarks/train_table.py --accuracy 0.85,0.88 --steps-per-epoch 469 adam=a1.csv,a2.csv,a3.csv kfac=k1.csv
    benchmarks/train_table.py --loss 80.5 adam=ae_adam.csv kfac=ae_kfac.csv
    benchmarks/train_table.py --loss-of a1,a2 --lowest-loss a1=x.csv a2=y.csv kfac=k.csv

--loss-of LABELS adds the lowest of those runs' (median) final test losses as a target ("the best Adam's final
loss"); --lowest-loss adds a column of each run's lowest test loss at any evaluation (a run that overfits ends
above it); --steps-per-epoch K adds the epochs to each target (steps / K: fractions of an epoch).

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


def final_loss(logs):
    """The median over seeds of the last evaluation's test loss (None without one)."""
    return median_or_none([float(evals[-1]["test_loss"]) if evals[-1]["test_loss"] else None for _, evals in logs])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accuracy", default="", help="comma-separated test accuracies to time")
    p.add_argument("--loss", default="", help="comma-separated test losses to time")
    p.add_argument("--loss-of", default="", help="comma-separated labels: time the lowest of their final test losses")
    p.add_argument("--lowest-loss", action="store_true", help="a column of each run's lowest test loss")
    p.add_argument("--steps-per-epoch", type=int, default=0, help="the steps of an epoch: adds epochs to targets")
    p.add_argument("runs", nargs="+", help="label=path[,path...]")
    a = p.parse_args()
    runs = []
    for spec in a.runs:
        label, _, paths = spec.partition("=")
        runs.append((label, [read(path) for path in paths.split(",")]))
    targets = [("test_accuracy", float(t), True, f"{100 * float(t):g}%") for t in a.accuracy.split(",") if t] + \
              [("test_loss", float(t), False, f"{float(t):g}") for t in a.loss.split(",") if t]
    if a.loss_of:
        finals = {label: final_loss(logs) for label, logs in runs}
        of = [(finals[label], label) for label in a.loss_of.split(",") if finals.get(label) is not None]
        if len(of) != len(a.loss_of.split(",")):
            sys.exit(f"--loss-of {a.loss_of}: each label must name a run with a final test loss")
        best, label = min(of)
        targets.append(("test_loss", best, False, f"{label}'s final {best:.4f}"))
    head = ["run", "seeds"]
    for _, _, _, name in targets:
        head += [f"s to {name}", f"steps to {name}"] + ([f"epochs to {name}"] if a.steps_per_epoch else [])
    head += ["final test acc", "final test loss"] + (["lowest test loss"] if a.lowest_loss else []) + ["ms/step", "steps"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, logs in runs:
        cells = [label, str(len(logs))]
        for key, t, above, _ in targets:
            hits = [first_reach(evals, key, t, above) for _, evals in logs]
            reached = [h for h in hits if h]
            med_s = median_or_none([h[0] if h else None for h in hits]) if len(reached) * 2 > len(hits) else None
            med_k = median_or_none([h[1] if h else None for h in hits]) if len(reached) * 2 > len(hits) else None
            s_cell = len(cells)
            cells += ["—" if med_s is None else f"{med_s:.1f}", "—" if med_k is None else f"{med_k:.0f}"]
            if a.steps_per_epoch:
                cells += ["—" if med_k is None else f"{med_k / a.steps_per_epoch:.2f}"]
            if len(reached) < len(hits):
                cells[s_cell] += f" ({len(reached)}/{len(hits)} reached)"
        finals = [evals[-1] for _, evals in logs]
        acc = median_or_none([float(e["test_accuracy"]) if e["test_accuracy"] else None for e in finals])
        loss = final_loss(logs)
        lowest = median_or_none([min((float(e["test_loss"]) for e in evals if e["test_loss"]), default=None)
                                 for _, evals in logs])
        per_step = median_or_none([1000 * float(s[-1]["time_s"]) / len(s) if s else None for s, _ in logs])
        nsteps = median_or_none([len(s) for s, _ in logs])
        cells += ["—" if acc is None else f"{100 * acc:.2f}%", "—" if loss is None else f"{loss:.4f}"]
        if a.lowest_loss:
            cells += ["—" if lowest is None else f"{lowest:.4f}"]
        cells += ["—" if per_step is None else f"{per_step:.1f}", f"{nsteps:.0f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
