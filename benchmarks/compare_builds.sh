#!/usr/bin/env bash
# Same-run comparison of two builds of natgrad-bench (for example main before and after a change): the two
# binaries run alternately, round after round, so drift of a shared host affects both alike; prints, per
# benchmark, the median over rounds of (new / old) with its range.
#
# Usage: bash benchmarks/compare_builds.sh OLD_BUILD_DIR NEW_BUILD_DIR [filter] [rounds] [threads]
set -euo pipefail
old=$1
new=$2
filter=${3:-'mlp/gradient|mlp/fvp_exact|mlp_c10000|cnn'}
rounds=${4:-3}
threads=${5:-2}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
  for side in old new; do
    dir=$old
    [ "$side" = new ] && dir=$new
    OMP_NUM_THREADS=$threads "$dir/benchmarks/natgrad-bench" --benchmark_filter="$filter" --benchmark_repetitions=3 \
      --benchmark_report_aggregates_only=true --benchmark_format=json > "$out/${side}_$r.json"
  done
done
/usr/bin/python3 - "$out" "$rounds" "$threads" <<'PY'
import json, statistics, sys
out, rounds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def medians(path):
    return {b["run_name"].split("/real_time")[0]: b["real_time"] for b in json.load(open(path))["benchmarks"]
            if b.get("aggregate_name") == "median"}
ratios, times = {}, {}
for r in range(1, rounds + 1):
    o, n = medians(f"{out}/old_{r}.json"), medians(f"{out}/new_{r}.json")
    for k in n:
        if k in o:
            ratios.setdefault(k, []).append(n[k] / o[k])
            times.setdefault(k, []).append((o[k], n[k]))
print(f"new / old, median over {rounds} rounds [min, max], {threads} threads")
for k, v in ratios.items():
    o = statistics.median(t[0] for t in times[k]); n = statistics.median(t[1] for t in times[k])
    print(f"  {k:28s} {statistics.median(v):.3f}  [{min(v):.3f}, {max(v):.3f}]   old {o:.1f} ms, new {n:.1f} ms")
PY
