#!/usr/bin/env python3
"""natgrad spectrum --plot density.svg: the file is valid SVG (parsed), and what it shows agrees with the
report written by the same run: the mass-at-zero label is the report's SLQ weights below 1e-4 lambda_max
(summed here), the caption's trace is the report's Hutchinson estimate, one red mark per top eigenvalue, the
density curve drawn through 400 points. A build without PLplot must refuse --plot with a usage error and
write nothing.

usage: spectrum_plot.py <natgrad> <tests/data directory> <1 if built with PLplot, else 0>
"""
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

natgrad, data_dir, have_plplot = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
model = os.path.join(data_dir, "chain_v1", "model.json")
csv = os.path.join(data_dir, "chain_v1", "data.csv")
out = tempfile.mkdtemp(prefix="natgrad_plot_")
svg, report = os.path.join(out, "density.svg"), os.path.join(out, "r.json")
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


cmd = [natgrad, "spectrum", "--model", model, "--data", csv, "--dtype", "float64", "--top", "4", "--trace",
       "--probes", "12", "--plot", svg, "--report", report, "--quiet"]
r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
if not have_plplot:
    check(r.returncode == 2 and "needs a build with PLplot" in r.stderr, "refused without PLplot: %s" % r.stderr.strip())
    check(not os.path.exists(svg) and not os.path.exists(report), "nothing written")
    sys.exit(1 if failures else 0)

check(r.returncode == 0, "spectrum --plot exits 0 (%s)" % r.stderr.strip())
root = ET.parse(svg).getroot()  # raises on anything that is not well-formed XML
ns = "{http://www.w3.org/2000/svg}"
check(root.tag == ns + "svg", "the root element is <svg>: %s" % root.tag)
j = json.load(open(report))
check("density" in j, "--plot implies --density (the report has it)")
texts = ["".join(e.itertext()) for e in root.iter(ns + "text")]
lam_max = j["spectrum"]["eigenvalues"][0]
zero = sum(w for v, w in zip(j["density"]["nodes"], j["density"]["weights"]) if v < 1e-4 * lam_max)
label = "%.1f%%" % (100 * zero)
check(label in texts, "the mass-at-zero label %s is among the texts %s" % (label, texts))
caption = [t for t in texts if t.startswith("tr(F) = ")]
check(len(caption) == 1, "one caption with the trace: %s" % caption)
if caption:
    shown = float(caption[0].split("=")[1].split("+-")[0])
    want = j["trace"]["estimate"]
    check(abs(shown - want) <= 5e-4 * abs(want), "the caption's trace %g is the report's %g" % (shown, want))
red = [e for e in root.iter(ns + "polyline") if e.get("stroke") == "#D62728"]
check(len(red) == 4, "one red mark per top eigenvalue: %d" % len(red))
blue = sum(len(e.get("points").split()) for e in root.iter(ns + "polyline") if e.get("stroke") == "#1F77B4")
check(blue >= 400, "the density curve has 400 points: %d" % blue)
check(any("top 4" == t for t in texts), "the top-k marks are labelled")

# spectrum --exact --plot: the exact eigenvalues as the picture's quadrature; its mass-at-zero label and its
# caption's trace are the report's exact ones, and the title says exact.
svg2, report2 = os.path.join(out, "exact.svg"), os.path.join(out, "exact.json")
r = subprocess.run([natgrad, "spectrum", "--model", model, "--data", csv, "--dtype", "float64", "--top", "4",
                    "--exact", "--plot", svg2, "--report", report2, "--quiet"], capture_output=True, text=True,
                   timeout=300)
check(r.returncode == 0, "spectrum --exact --plot exits 0 (%s)" % r.stderr.strip())
root = ET.parse(svg2).getroot()
j = json.load(open(report2))
texts = ["".join(e.itertext()) for e in root.iter(ns + "text")]
label = "%.1f%%" % (100 * j["spectrum"]["mass_at_zero"])
check(label in texts, "exact: the mass-at-zero label %s is among the texts %s" % (label, texts))
caption = [t for t in texts if t.startswith("tr(F) = ")]
check(len(caption) == 1 and abs(float(caption[0].split("=")[1].split("+-")[0]) - j["spectrum"]["trace"])
      <= 5e-4 * j["spectrum"]["trace"], "exact: the caption's trace is the report's exact %g: %s"
      % (j["spectrum"]["trace"], caption))
check(any("exact" in t for t in texts), "exact: the title says exact")
red = [e for e in root.iter(ns + "polyline") if e.get("stroke") == "#D62728"]
check(len(red) == min(4, j["spectrum"]["nonzero"]), "exact: one red mark per top eigenvalue: %d" % len(red))
sys.exit(1 if failures else 0)
