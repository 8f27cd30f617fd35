#!/usr/bin/env python3
"""natgrad-bench --model: the user's model gets model/gradient, model/fvp_exact, model/fvp_mc,
model/fvp_empirical and model/cg10 with their counters, from a data file or random data; Google Benchmark's
flags still apply; bad arguments and files are errors that name them.

usage: bench_user_model.py <natgrad-bench> <tests/data directory>
"""
import json
import os
import subprocess
import sys
import tempfile

bench, data_dir = sys.argv[1], sys.argv[2]
model = os.path.join(data_dir, "chain_v1", "model.json")
csv = os.path.join(data_dir, "chain_v1", "data.csv")
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def run(args):
    return subprocess.run([bench] + args, capture_output=True, text=True, timeout=300)


def results(args):
    r = run(args + ["--benchmark_format=json", "--benchmark_min_time=0.01"])
    check(r.returncode == 0, "natgrad-bench %s exits 0 (%s)" % (" ".join(args), r.stderr.strip()[-300:]))
    return {b["name"]: b for b in json.loads(r.stdout)["benchmarks"]} if r.returncode == 0 else {}


expected = ["model/gradient", "model/fvp_exact", "model/fvp_mc", "model/fvp_empirical", "model/cg10"]
for label, extra in [("data file", ["--data", csv, "--batch", "40"]), ("random data", ["--batch=16"])]:
    got = results(["--model", model] + extra)
    names = {n.split("/real_time")[0].split("/iterations")[0] for n in got}
    for e in expected:
        check(e in names, "%s: %s registered" % (label, e))
    # Without a filter only the reference GEMM and the model's benchmarks run.
    check(names <= set(expected) | {"gemm/1024/1024"}, "%s: nothing but gemm/1024 and model/*: %s" % (label, sorted(names)))
    for name, b in got.items():
        if name.startswith("model/"):
            check(b.get("GFLOP/s", 0) > 0, "%s: %s has a positive GFLOP/s" % (label, name))
        if name.startswith("model/fvp"):
            check(b.get("products") == 1, "%s: %s counts one product per iteration" % (label, name))
        if name.startswith("model/cg10"):
            check(b.get("iterations") == 10 and b.get("products", 0) >= 10,
                  "%s: cg10 ran 10 iterations (%s, %s products)" % (label, b.get("iterations"), b.get("products")))

# Google Benchmark's own filter still chooses, among the model's benchmarks only: "fvp_exact" also names the
# built-in mlp/fvp_exact, cnn/fvp_exact, ..., which --model leaves out.
got = results(["--model", model, "--benchmark_filter=model/fvp_exact"])
check(len(got) == 1 and next(iter(got)).startswith("model/fvp_exact"), "--benchmark_filter selects one: %s" % list(got))
got = results(["--model", model, "--batch", "8", "--benchmark_filter=fvp_exact"])
check(len(got) == 1 and next(iter(got)).startswith("model/fvp_exact"),
      "--benchmark_filter=fvp_exact with --model runs model/fvp_exact alone: %s" % list(got))

# --help names natgrad-bench's own options, then Google Benchmark's.
r = run(["--help"])
for option in ["--model", "--weights", "--data", "--batch", "--benchmark_filter"]:
    check(r.returncode == 0 and option in r.stdout, "--help lists %s" % option)

for args, text in [(["--model", model, "--bogus"], "unknown argument '--bogus'"),
                   (["--model"], "--model needs a value"),
                   (["--model", model, "--batch", "0"], "--batch must be a positive integer"),
                   (["--data", csv], "need --model"),
                   (["--model", os.path.join(tempfile.gettempdir(), "no_such_model.json")], "no_such_model.json")]:
    r = run(args)
    check(r.returncode != 0 and text in r.stderr, "%s fails with '%s' (rc %d: %s)" % (args[-1], text, r.returncode, r.stderr.strip()))

sys.exit(1 if failures else 0)
