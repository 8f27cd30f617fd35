#!/usr/bin/env bash
# Side-by-side run of natgrad-bench and the PyTorch peer (benchmarks/torch_fvp_bench.py) in one session,
# same thread count; prints the ratios quoted in docs/performance.md.
#
# Usage: bash benchmarks/compare_peer.sh [build-dir] [threads] [rounds]
#
# On a shared host the speed of both sides drifts by tens of percent within minutes, so the comparison runs
# in rounds: each round measures natgrad (medians of 5 repetitions), natgrad with one thread, and the peer
# (medians of its 7), back to back, and forms the ratios of that round. The summary is the median over the
# rounds of each ratio, next to its smallest and largest value.
#
# PyTorch runs on the system BLAS: install libopenblas0-pthread (without it Debian's PyTorch runs its
# matrix products on the reference BLAS, at ~3 GFLOP/s). Debian 12's OpenBLAS does not recognise every recent
# CPU and may fall back to its generic Prescott kernels; PEER_OPENBLAS_CORETYPE (default: unset, i.e. OpenBLAS's own choice, the peer
# as installed) lets the peer use a modern kernel, e.g. PEER_OPENBLAS_CORETYPE=SkylakeX.
set -euo pipefail
build=${1:-build}
threads=${2:-2}
rounds=${3:-3}
peer="$(dirname "$0")/torch_fvp_bench.py"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
peer_env=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
[ -n "${PEER_OPENBLAS_CORETYPE:-}" ] && peer_env+=(OPENBLAS_CORETYPE="$PEER_OPENBLAS_CORETYPE")
bench() {  # bench <threads> <filter> <json>
  OMP_NUM_THREADS=$1 "$build/benchmarks/natgrad-bench" --benchmark_filter="$2" --benchmark_repetitions=5 \
    --benchmark_report_aggregates_only=true --benchmark_format=json > "$3"
}
# The peer must be the strongest PyTorch this machine runs: refuse the reference BLAS rather than report a
# ratio against it.
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)
case "$blas" in
  *openblas*) ;;
  *) echo "compare_peer.sh: PyTorch would run on the reference BLAS ($blas), a peer several times slower than" \
          "it can be: install libopenblas0-pthread (bash scripts/install-deps.sh --test)" >&2; exit 2 ;;
esac
for r in $(seq 1 "$rounds"); do
  echo "round $r of $rounds" >&2
  bench "$threads" 'gemm|mlp/gradient|mlp/fvp_exact|cnn|resnet|gpt' "$out/ours_$r.json"
  bench 1 'mlp/fvp_exact' "$out/ours1_$r.json"
  "${peer_env[@]}" /usr/bin/python3 "$peer" --threads "$threads" > "$out/mlp_$r.txt"
  "${peer_env[@]}" /usr/bin/python3 "$peer" --threads "$threads" --model cnn > "$out/cnn_$r.txt"
  "${peer_env[@]}" /usr/bin/python3 "$peer" --threads "$threads" --model resnet > "$out/resnet_$r.txt"
  "${peer_env[@]}" /usr/bin/python3 "$peer" --threads "$threads" --model gpt --reps 5 > "$out/gpt_$r.txt"
done
/usr/bin/python3 - "$out" "$threads" "$rounds" "${PEER_OPENBLAS_CORETYPE:-auto}" <<'PY'
import json, re, statistics, sys
out, threads, rounds, core = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def ours(path):
    return {b["run_name"].split("/real_time")[0]: b["real_time"] for b in json.load(open(path))["benchmarks"]
            if b.get("aggregate_name") == "median"}
def peer(path):
    t = open(path).read()
    get = lambda k: float(re.search(k + r"\s+([0-9.]+)", t).group(1)) * 1e3
    return get("gradient_s"), min(get("fvp_forward_ad_s"), get("fvp_retained_s"), get("fvp_double_backward_s"))
rows = {}
def add(name, value):
    rows.setdefault(name, []).append(value)
for r in range(1, rounds + 1):
    o, o1 = ours(f"{out}/ours_{r}.json"), ours(f"{out}/ours1_{r}.json")
    line = [f"round {r}:"]
    for model in ("mlp", "cnn", "resnet", "gpt"):
        g, f = o[f"{model}/gradient"], o[f"{model}/fvp_exact"]
        pg, pf = peer(f"{out}/{model}_{r}.txt")
        add(f"{model}: pytorch best fvp / natgrad fvp", pf / f)
        add(f"{model}: natgrad fvp / natgrad gradient", f / g)
        add(f"{model}: natgrad gradient / pytorch gradient", g / pg)
        line.append(f"{model} natgrad fvp {f:.1f} ms, gradient {g:.1f} ms; pytorch best fvp {pf:.1f} ms, gradient {pg:.1f} ms;")
    # The FLOP count of docs/performance.md for the MLP product, against the same build's GEMM rate.
    B = 1000
    flops = 2 * B * (2 * 784 * 1024 + 4 * 1024 * 1024 + 4 * 1024 * 10)
    gemm_rate = 2 * 1024 ** 3 / (o["gemm/1024/1024"] * 1e-3)
    add("mlp: fvp GFLOP/s / gemm/1024 GFLOP/s", flops / (o["mlp/fvp_exact"] * 1e-3) / gemm_rate)
    add(f"mlp: fvp 1 thread / fvp {threads} threads", o1["mlp/fvp_exact"] / o["mlp/fvp_exact"])
    # The GPT product's FLOP count (natgrad-bench's GFLOP/s counter) against the same run's GEMM rate.
    gpt_rate = next(b["GFLOP/s"] for b in json.load(open(f"{out}/ours_{r}.json"))["benchmarks"]
                    if b.get("aggregate_name") == "median" and b["run_name"].startswith("gpt/fvp_exact"))
    add("gpt: fvp GFLOP/s / gemm/1024 GFLOP/s", gpt_rate * 1e9 / gemm_rate)
    line.append(f"mlp fvp 1 thread {o1['mlp/fvp_exact']:.1f} ms; gemm/1024 {o['gemm/1024/1024']:.2f} ms")
    print(" ".join(line))
print(f"\nmedian over {rounds} rounds [min, max]  (threads {threads}, peer OpenBLAS core {core})")
for name, v in rows.items():
    print(f"  {name:42s} {statistics.median(v):6.2f}  [{min(v):.2f}, {max(v):.2f}]")
PY
