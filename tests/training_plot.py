#!/usr/bin/env python3
"""Pictures of training runs: natgrad train --plot and natgrad plot.

The SVG is parsed as XML and read the way a reader reads a chart: each panel is found by its frame and its
title, its data-to-pixel map is recovered from its own tick labels (each tick label is drawn at its value's
position), and the curves are mapped back to data and compared with the CSV log, parsed here independently:
each step's loss against steps / steps-per-epoch and against time_s, the test loss and accuracy of each
evaluation, and the epoch means against the report's train_loss. natgrad plot draws two logs in two colours
whose legend labels sit beside their colour; bad logs end with one line naming the file and the line;
outputs into a missing directory are refused before anything is read or trained. A build without PLplot
must refuse both with a usage error.

usage: training_plot.py <natgrad> <1 if built with PLplot, else 0>
"""
import atexit
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

natgrad, have_plplot = sys.argv[1], sys.argv[2] == "1"
out = tempfile.mkdtemp(prefix="natgrad_training_plot_")
atexit.register(shutil.rmtree, out, True)
NS = "{http://www.w3.org/2000/svg}"
BLUE, ORANGE = "#1F77B4", "#FF7F0E"
TOL = 0.15  # pixels: PLplot writes points to 0.01 px, tick labels to 1e-6 px
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def run(*args):
    return subprocess.run([natgrad, *args], capture_output=True, text=True, timeout=300)


# A tiny synthetic problem: 42 training samples (batches of 10: 5 steps an epoch, the last of 2 samples),
# 18 test samples, 4 inputs, 3 classes from a linear rule with noise, an MLP.
rng = random.Random(7)


def samples(n):
    rows = []
    for _ in range(n):
        x = [rng.uniform(-1, 1) for _ in range(4)]
        score = [x[0] + x[1], x[2] - x[0], x[3] - x[1]]
        score = [s + rng.gauss(0, 0.3) for s in score]
        rows.append(",".join("%.6f" % v for v in x) + ",%d" % score.index(max(score)))
    return "\n".join(rows) + "\n"


model = os.path.join(out, "model.json")
json.dump({"input_shape": [4], "likelihood": "categorical",
           "layers": [{"type": "linear", "in_features": 4, "out_features": 8}, {"type": "tanh"},
                      {"type": "linear", "in_features": 8, "out_features": 3}]}, open(model, "w"))
train_csv, test_csv = os.path.join(out, "train.csv"), os.path.join(out, "test.csv")
open(train_csv, "w").write(samples(42))
open(test_csv, "w").write(samples(18))
problem = ["--model", model, "--data", train_csv, "--test-data", test_csv, "--batch", "10", "--dtype", "float64",
           "--quiet"]

if not have_plplot:
    svg = os.path.join(out, "x.svg")
    r = run("train", *problem, "--epochs", "1", "--plot", svg)
    check(r.returncode == 2 and "needs a build with PLplot" in r.stderr, "train --plot refused: %s" % r.stderr.strip())
    r = run("plot", train_csv, "--output", svg)
    check(r.returncode == 2 and "needs a build with PLplot" in r.stderr, "plot refused: %s" % r.stderr.strip())
    check(not os.path.exists(svg), "nothing written")
    sys.exit(1 if failures else 0)


# ---- reading the SVG ----------------------------------------------------------------------------------------
def number(text):
    try:
        return float(text)
    except ValueError:
        return None


def read_svg(path):
    root = ET.parse(path).getroot()  # raises on anything that is not well-formed XML
    check(root.tag == NS + "svg", "%s: the root element is <svg>" % os.path.basename(path))
    lines = []
    for e in root.iter(NS + "polyline"):
        pts = [tuple(float(v) for v in p.split(",")) for p in e.get("points").split()]
        lines.append({"stroke": e.get("stroke"), "opacity": float(e.get("stroke-opacity", "1")),
                      "width": float(e.get("stroke-width")), "points": pts})
    texts = []
    for e in root.iter(NS + "text"):
        m = re.match(r"matrix\(([^)]*)\)", e.get("transform", ""))
        a, b, c, d, tx, ty = (float(v) for v in m.group(1).split())
        texts.append({"text": "".join(e.itertext()), "anchor": e.get("text-anchor"), "x": tx, "y": ty,
                      "rotated": abs(b) > 1e-6})
    return lines, texts


def panels(lines, texts):
    """Each panel: its frame (the long black horizontal lines in pairs), its title (the text just above it) and
    the maps from data to pixels fitted on its tick labels."""
    frames = {}
    for l in lines:
        p = l["points"]
        if l["stroke"] == "#000000" and len(p) == 2 and abs(p[0][1] - p[1][1]) < 0.01 and abs(p[0][0] - p[1][0]) > 150:
            key = (round(min(p[0][0], p[1][0])), round(max(p[0][0], p[1][0])))
            frames.setdefault(key, set()).add(round(p[0][1], 2))
    result = {}
    boxes = []
    for (x0, x1), ys in frames.items():  # panels one above the other share their x range: bottom, top, bottom, ...
        ys = sorted(ys)
        check(len(ys) % 2 == 0, "the frames at x %d..%d have a bottom and a top each: %s" % (x0, x1, ys))
        boxes += [(x0, x1, ys[i], ys[i + 1]) for i in range(0, len(ys) - 1, 2)]
    for x0, x1, y0, y1 in boxes:
        title = [t["text"] for t in texts if t["anchor"] == "middle" and not t["rotated"] and x0 <= t["x"] <= x1
                 and y1 < t["y"] < y1 + 40 and number(t["text"]) is None]
        xticks = [(number(t["text"]), t["x"]) for t in texts if t["anchor"] == "middle" and not t["rotated"]
                  and number(t["text"]) is not None and x0 - 1 <= t["x"] <= x1 + 1 and y0 - 40 < t["y"] < y0]
        yticks = [(number(t["text"]), t["y"]) for t in texts if t["anchor"] == "end" and not t["rotated"]
                  and number(t["text"]) is not None and x0 - 30 < t["x"] < x0 and y0 - 1 <= t["y"] <= y1 + 1]
        name = title[0] if len(title) == 1 else "?%s" % title
        result[name] = {"box": (x0, x1, y0, y1), "x": fit(name + " x", xticks), "y": fit(name + " y", yticks)}
    return result


def fit(what, ticks):
    """value -> pixel from the first and last tick label; every other label must lie on the same line."""
    ticks = sorted(ticks)
    if len(ticks) < 2:
        check(False, "%s: at least two tick labels (%s)" % (what, ticks))
        return lambda v: v
    (v0, p0), (v1, p1) = ticks[0], ticks[-1]
    scale = (p1 - p0) / (v1 - v0)
    worst = max(abs(p0 + (v - v0) * scale - p) for v, p in ticks)
    check(worst < 0.05, "%s: the %d tick labels lie on one linear scale (%.3g px)" % (what, len(ticks), worst))
    return lambda v: p0 + (v - v0) * scale


def inside(panel, line):
    x0, x1, y0, y1 = panel["box"]
    return all(x0 - 1 <= x <= x1 + 1 and y0 - 1 <= y <= y1 + 1 for x, y in line["points"])


def joined(chunks):
    """A curve PLplot wrote as several polylines (256 points at most each), each starting where the last ended."""
    pts = []
    for c in chunks:
        pts += c["points"][1:] if pts and c["points"][0] == pts[-1] else c["points"]
    return pts


def same_points(panel, drawn, want):
    """The drawn pixels are the data points, one for one."""
    px = [(panel["x"](x), panel["y"](y)) for x, y in want]
    if len(drawn) != len(px):
        return False, "%d points drawn, %d in the data" % (len(drawn), len(px))
    worst = max(max(abs(a - c), abs(b - d)) for (a, b), (c, d) in zip(drawn, px))
    return worst < TOL, "largest difference %.3g px" % worst


def on_path(panel, drawn, want):
    """Every drawn point lies on the broken line through the data points (a dashed curve)."""
    px = [(panel["x"](x), panel["y"](y)) for x, y in want]
    worst = 0
    for x, y in drawn:
        best = 1e9
        for (ax, ay), (bx, by) in zip(px, px[1:]):
            t = 0 if bx == ax and by == ay else max(0, min(1, ((x - ax) * (bx - ax) + (y - ay) * (by - ay))
                                                           / ((bx - ax) ** 2 + (by - ay) ** 2)))
            best = min(best, ((x - ax - t * (bx - ax)) ** 2 + (y - ay - t * (by - ay)) ** 2) ** 0.5)
        worst = max(worst, best)
    return worst


def read_log(path):
    rows = list(csv.DictReader(open(path)))
    steps = [r for r in rows if r["kind"] == "step"]
    evals = [r for r in rows if r["kind"] == "eval"]
    per_epoch = sum(1 for r in steps if r["epoch"] == "1")  # (the runs here complete their first epoch)
    return steps, evals, per_epoch


# ---- train --plot -------------------------------------------------------------------------------------------
svg, log, report = (os.path.join(out, n) for n in ("natgrad.svg", "natgrad.csv", "natgrad.json"))
r = run("train", *problem, "--epochs", "4", "--log", log, "--plot", svg, "--report", report)
check(r.returncode == 0, "train --plot exits 0 (%s)" % r.stderr.strip())
check(not [f for f in os.listdir(out) if ".tmp" in f], "no temporary file left behind")
lines, texts = read_svg(svg)
words = [t["text"] for t in texts]
for w in ["loss by epoch", "loss by training time", "test accuracy by epoch", "test accuracy by training time",
          "epoch", "training time (s)", "loss", "test accuracy", "natgrad", "train loss, each step",
          "train loss, epoch mean", "test loss"]:
    check(w in words, "the text \"%s\" is in the picture" % w)
P = panels(lines, texts)
check(sorted(P) == sorted(["loss by epoch", "loss by training time", "test accuracy by epoch",
                           "test accuracy by training time"]), "four panels, found by frame and title: %s" % sorted(P))
steps, evals, per_epoch = read_log(log)
rep = json.load(open(report))
check(per_epoch == 5 and len(steps) == 20 and len(evals) == 4, "the log: 5 steps an epoch, 20 steps, 4 evaluations")


def curves(panel_name, colour, light):
    """The run's curves in a panel: the light (per-step) one joined, and the full-strength ones of width 2."""
    p = P.get(panel_name)
    if p is None:
        return None, [], []
    mine = [l for l in lines if l["stroke"] == colour and inside(p, l)]
    return p, joined([l for l in mine if l["opacity"] < 1]) if light else [], \
        [l for l in mine if l["opacity"] == 1 and l["width"] == 2]


for name, xkey in [("loss by epoch", "epoch"), ("loss by training time", "time")]:
    p, step_pts, wide = curves(name, BLUE, True)
    if p is None:
        continue
    x = (lambda row: int(row["step"]) / per_epoch) if xkey == "epoch" else (lambda row: float(row["time_s"]))
    ok, how = same_points(p, step_pts, [(x(s), float(s["loss"])) for s in steps])
    check(ok, "%s: each step's loss drawn lightly at (%s, loss) of the log: %s" % (name, xkey, how))
    means = [(e["epoch"] if xkey == "epoch" else e["time_s"], e["train_loss"]) for e in rep["epochs"]]
    solid = [l for l in wide if len(l["points"]) == len(means) and same_points(p, l["points"], means)[0]]
    check(len(solid) == 1, "%s: one line through the report's epoch train_loss at (%s, train_loss)" % (name, xkey))
    dashes = [pt for l in wide if l not in solid for pt in l["points"]]
    want = [(x(e), float(e["test_loss"])) for e in evals]
    check(len(dashes) > 2 * len(evals), "%s: the test loss is dashed (%d dash ends)" % (name, len(dashes)))
    if dashes:
        worst = on_path(p, dashes, want)
        check(worst < TOL, "%s: every dash lies on the line through the log's test losses (%.3g px)" % (name, worst))
        fx, fy = p["x"](want[0][0]), p["y"](want[0][1])
        check(any(abs(dx - fx) < TOL and abs(dy - fy) < TOL for dx, dy in dashes)
              and min(dx for dx, _ in dashes) > fx - TOL, "%s: the dashes start at the first evaluation" % name)
        check(max(d[0] for d in dashes) > p["x"](want[-1][0]) - 25, "%s: the dashes reach the last evaluation" % name)
    # Linear axes from 0 that show all the data: x from 0, y over the losses drawn.
    ys = [float(s["loss"]) for s in steps] + [w[1] for w in want] + [m[1] for m in means]
    x0, x1, y0, y1 = p["box"]
    check(abs(p["x"](0) - x0) < TOL, "%s: x starts at 0 at the frame's left" % name)
    check(y0 < p["y"](min(ys)) and p["y"](max(ys)) < y1, "%s: the losses are within the frame" % name)

for name, xkey in [("test accuracy by epoch", "epoch"), ("test accuracy by training time", "time")]:
    p, _, wide = curves(name, BLUE, False)
    if p is None:
        continue
    x = (lambda row: int(row["step"]) / per_epoch) if xkey == "epoch" else (lambda row: float(row["time_s"]))
    want = [(x(e), float(e["test_accuracy"])) for e in evals]
    hits = [l for l in wide if same_points(p, l["points"], want)[0]]
    check(len(hits) == 1, "%s: one line through the log's test accuracies at (%s, accuracy)" % (name, xkey))

# ---- natgrad plot: two runs ---------------------------------------------------------------------------------
adam_log = os.path.join(out, "adam_run.csv")
r = run("train", *problem, "--epochs", "3", "--optimizer", "adam", "--lr", "0.05", "--log", adam_log)
check(r.returncode == 0, "a second run (adam) exits 0 (%s)" % r.stderr.strip())
two = os.path.join(out, "two.svg")
r = run("plot", log, adam_log, "--output", two, "--labels", "first,second")
check(r.returncode == 0, "natgrad plot of two logs exits 0 (%s)" % r.stderr.strip())
lines, texts = read_svg(two)
P = panels(lines, texts)
check(len(P) == 4, "four panels: %s" % sorted(P))
for path, colour in [(log, BLUE), (adam_log, ORANGE)]:
    s, e, n = read_log(path)
    for name in ["loss by epoch", "loss by training time"]:
        p, step_pts, _ = curves(name, colour, True)
        if p is None:
            continue
        x = (lambda row: int(row["step"]) / n) if "epoch" in name else (lambda row: float(row["time_s"]))
        ok, how = same_points(p, step_pts, [(x(row), float(row["loss"])) for row in s])
        check(ok, "%s: %s's steps drawn in %s: %s" % (name, os.path.basename(path), colour, how))
# The legend: each label beside a line sample of its run's colour (outside every panel).
samples_ = [l for l in lines if not any(inside(p, l) for p in P.values()) and len(l["points"]) == 2
            and l["stroke"] in (BLUE, ORANGE)]
for label, colour in [("first", BLUE), ("second", ORANGE)]:
    t = [t for t in texts if t["text"] == label]
    near = [l for l in samples_ if t and abs(l["points"][0][1] - t[0]["y"]) < 3 and l["stroke"] == colour
            and 0 < t[0]["x"] - max(l["points"][0][0], l["points"][1][0]) < 20]
    check(len(t) == 1 and len(near) == 1, "the legend's \"%s\" stands beside a %s line" % (label, colour))

# Default labels (the files' stems) and --x epochs: two panels, nothing against time.
r = run("plot", log, adam_log, "--output", two, "--x", "epochs")
lines, texts = read_svg(two)
words = [t["text"] for t in texts]
check(r.returncode == 0 and "natgrad" in words and "adam_run" in words, "default labels: the files' stems")
P = panels(lines, texts)
check(sorted(P) == ["loss by epoch", "test accuracy by epoch"] and "training time (s)" not in words,
      "--x epochs: the epoch panels only: %s" % sorted(P))
r = run("plot", log, "--output", two, "--x", "seconds")
P = panels(*read_svg(two))
check(sorted(P) == ["loss by training time", "test accuracy by training time"], "--x seconds: %s" % sorted(P))
# A log without accuracies (no test data): the loss panels only.
noacc = os.path.join(out, "noacc.csv")
open(noacc, "w").write("".join(l for l in open(log) if not l.startswith("eval")))
r = run("plot", noacc, "--output", two)
P = panels(*read_svg(two))
check(r.returncode == 0 and sorted(P) == ["loss by epoch", "loss by training time"],
      "no accuracies in the log: no accuracy panels: %s" % sorted(P))

# A run stopped within its first epoch: its log does not say how long an epoch is; it is drawn against time
# only, with a note. One stopped in its second epoch takes its epoch length from the first.
partial = os.path.join(out, "partial.csv")
open(partial, "w").write("".join(open(log).readlines()[:4]))  # the header and 3 steps
r = run("plot", partial, "--output", two)
lines, texts = read_svg(two)
P = panels(lines, texts)
drawn = {n: joined([l for l in lines if l["stroke"] == BLUE and l["opacity"] < 1 and inside(p, l)])
         for n, p in P.items()}
check(r.returncode == 0 and "partial.csv stopped within its first epoch" in r.stderr
      and len(drawn.get("loss by training time", [])) == 3 and not drawn.get("loss by epoch"),
      "a log stopped within its first epoch: drawn against time only, with a note (%s)" % r.stderr.strip())
second = os.path.join(out, "second.csv")
open(second, "w").write("".join(l for l in open(log).readlines()[:9] if not l.startswith("eval")))  # 5 + 2 steps
r = run("plot", second, "--output", two)
lines, texts = read_svg(two)
P = panels(lines, texts)
s2, _, _ = read_log(second)
p = P.get("loss by epoch")
ok, how = same_points(p, joined([l for l in lines if l["stroke"] == BLUE and l["opacity"] < 1 and inside(p, l)]),
                      [(int(row["step"]) / 5, float(row["loss"])) for row in s2]) if p else (False, "no panel")
check(r.returncode == 0 and r.stderr == "" and ok, "a log stopped in its second epoch: 5 steps an epoch: %s" % how)

# ---- refusals -----------------------------------------------------------------------------------------------
good = open(log).read().splitlines()


def refused(name, text, want, code=1):
    path = os.path.join(out, name)
    if text is not None:
        open(path, "w").write(text)
    target = os.path.join(out, "refused.svg")
    r = run("plot", log, path, "--output", target)
    msg = r.stderr.strip()
    check(r.returncode == code and len(msg.splitlines()) == 1 and all(w in msg for w in want)
          and not os.path.exists(target), "%s: one line naming %s, exit %d: %s" % (name, want, code, msg))


refused("header.csv", "kind,step,epoch,time_s,loss\n" + "\n".join(good[1:]) + "\n", ["header.csv: line 1:", "header"])
short = good[:]
short[2] = short[2].rsplit(",", 1)[0]
refused("short.csv", "\n".join(short) + "\n", ["short.csv: line 3 has 9 fields"])
word = good[:]
fields = word[3].split(",")
fields[4] = "abc"
word[3] = ",".join(fields)
refused("word.csv", "\n".join(word) + "\n", ["word.csv: line 4, column 5 (loss)", "\"abc\" is not a number"])
refused("missing.csv", None, ["missing.csv: cannot open"])
kind = good[:]
kind[5] = "evaluation" + kind[5][kind[5].index(","):]
refused("kind.csv", "\n".join(kind) + "\n", ["kind.csv: line 6, column 1 (kind)", "neither step nor eval"])
frac = good[:]
frac[2] = frac[2].replace("step,2,", "step,2.5,", 1)
refused("frac.csv", "\n".join(frac) + "\n", ["frac.csv: line 3, column 2 (step)", "not a whole number"])
blank = good[:4] + [""] + good[4:]
refused("blank.csv", "\n".join(blank) + "\n", ["blank.csv: line 5 is empty"])
refused("empty_log.csv", good[0] + "\n", ["empty_log.csv: holds no steps"])
r = run("plot", log, "--output", os.path.join(out, "x.svg"), "--labels", "only,two")
check(r.returncode == 2 and "--labels" in r.stderr, "--labels with the wrong count: a usage error")

# Outputs into a missing directory: refused before the logs are read (a bad log would be named otherwise) or the
# training starts (no header line, no log written).
nowhere = os.path.join(out, "no_such_dir", "c.svg")
r = run("plot", os.path.join(out, "word.csv"), "--output", nowhere)
check(r.returncode == 1 and "no_such_dir does not exist" in r.stderr and "word.csv" not in r.stderr
      and len(r.stderr.strip().splitlines()) == 1, "plot --output into a missing directory: %s" % r.stderr.strip())
late_log = os.path.join(out, "late.csv")
r = run("train", *problem, "--epochs", "1", "--log", late_log, "--plot", nowhere)
check(r.returncode == 1 and "--plot" in r.stderr and "does not exist" in r.stderr and r.stdout == ""
      and not os.path.exists(late_log), "train --plot into a missing directory: refused first (%s)" % r.stderr.strip())
sys.exit(1 if failures else 0)
