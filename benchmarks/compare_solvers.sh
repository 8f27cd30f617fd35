#!/usr/bin/env bash
# Same-run comparison of natgrad solve --solver smw (the exact Gram solve) against CG to 1e-10 on the default
# MLP (784-256-256-10, Fashion-MNIST), float64, one damping, no deflation, no spectrum: for each batch size the
# two run alternately, round after round; prints the median timing_s.total of each, their ratio, the Gram's
# rows and times, and the true residuals. Then a list of 5 dampings by smw against one.
#
# Usage: bash benchmarks/compare_solvers.sh BUILD_DIR [sizes] [rounds] [threads] [damping]
set -euo pipefail
build=$1
sizes=${2:-"32 128 512 1000"}
rounds=${3:-3}
threads=${4:-2}
damping=${5:-1e-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
bin="$build/apps/natgrad"
common="--dtype float64 --damping $damping --threads $threads --spectrum 0 --quiet"
for n in $sizes; do
  for r in $(seq 1 "$rounds"); do
    "$bin" solve --batch "$n" $common --solver smw --report "$out/smw_${n}_$r.json" > /dev/null
    "$bin" solve --batch "$n" $common --solver cg --cg-tol 1e-10 --cg-max-iters 20000 --report "$out/cg_${n}_$r.json" > /dev/null
  done
done
lists=""
if [ -n "${LIST_N:-128}" ]; then
  n=${LIST_N:-128}
  for r in $(seq 1 "$rounds"); do
    "$bin" solve --batch "$n" --dtype float64 --threads "$threads" --spectrum 0 --quiet --solver smw \
      --damping 1e-1,1e-2,1e-3,1e-4,1e-5 --report "$out/list_${n}_$r.json" > /dev/null
  done
  lists=$n
fi
/usr/bin/python3 - "$out" "$sizes" "$rounds" "$threads" "$lists" <<'PY'
import json, statistics, sys
out, sizes, rounds, threads, lists = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), sys.argv[4], sys.argv[5]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"{cpu}, {threads} threads, float64, medians of {rounds}")
print(f"{'N':>6} {'rows':>6} {'smw total s':>12} {'cg total s':>11} {'cg iters':>9} {'cg/smw':>7}   smw: form / factor / apply s   residual smw / cg")
def load(p): return json.load(open(p))
for n in sizes:
    s = [load(f"{out}/smw_{n}_{r}.json") for r in range(1, rounds + 1)]
    c = [load(f"{out}/cg_{n}_{r}.json") for r in range(1, rounds + 1)]
    ts = statistics.median(j["timing_s"]["total"] for j in s); tc = statistics.median(j["timing_s"]["total"] for j in c)
    g = s[0]["gram"]
    form = statistics.median(j["gram"]["form_s"] for j in s); fac = statistics.median(j["gram"]["factor_s"] for j in s)
    app = statistics.median(j["gram"]["apply_s"] for j in s)
    print(f"{n:>6} {g['rows']:>6} {ts:>12.3f} {tc:>11.3f} {c[0]['cg']['iterations']:>9} {tc/ts:>7.2f}   "
          f"{form:.3f} / {fac:.3f} / {app:.3f}   {s[0]['cg']['relative_residual']:.1e} / {c[0]['cg']['relative_residual']:.1e}")
if lists:
    l = [load(f"{out}/list_{lists}_{r}.json") for r in range(1, rounds + 1)]
    one = [load(f"{out}/smw_{lists}_{r}.json") for r in range(1, rounds + 1)] if lists in sizes else None
    tl = statistics.median(j["timing_s"]["total"] for j in l)
    line = f"N = {lists}, 5 dampings by smw: total {tl:.3f} s (form {statistics.median(j['gram']['form_s'] for j in l):.3f}, factor {statistics.median(j['gram']['factor_s'] for j in l):.3f}, apply {statistics.median(j['gram']['apply_s'] for j in l):.3f})"
    if one:
        t1 = statistics.median(j["timing_s"]["total"] for j in one)
        line += f"; one damping {t1:.3f} s: {tl/t1:.2f}x"
    print(line)
PY
