#!/usr/bin/env bash
# Side-by-side run of natgrad-bench and the PyTorch peer (../shared/peers/torch_fvp_bench.py) in one session,
# same thread count; prints the medians and the ratios the performance issue asks for.
# Usage: bash benchmarks/compare_peer.sh [build-dir] [threads]
# PyTorch runs on OpenBLAS. Debian 12's OpenBLAS does not recognise every recent CPU and may fall back to
# its generic Prescott kernels; PEER_OPENBLAS_CORETYPE (default: unset, i.e. OpenBLAS's own choice) lets the
# peer use a modern kernel, e.g. PEER_OPENBLAS_CORETYPE=SkylakeX, so the comparison is against its best.
set -euo pipefail
build=${1:-build}
threads=${2:-2}
peer="$(dirname "$0")/../../shared/peers/torch_fvp_bench.py"
[ -f "$peer" ] || peer="$(dirname "$0")/../shared/peers/torch_fvp_bench.py"
out=$(mktemp -d)
OMP_NUM_THREADS=$threads "$build/benchmarks/natgrad-bench" --benchmark_filter='gemm|mlp/gradient|mlp/fvp_exact|cnn' \
  --benchmark_repetitions=5 --benchmark_report_aggregates_only=true --benchmark_format=json > "$out/ours.json"
peer_env=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
[ -n "${PEER_OPENBLAS_CORETYPE:-}" ] && peer_env+=(OPENBLAS_CORETYPE="$PEER_OPENBLAS_CORETYPE")
"${peer_env[@]}" /usr/bin/python3 "$peer" --threads "$threads" > "$out/mlp.txt"
"${peer_env[@]}" /usr/bin/python3 "$peer" --threads "$threads" --cnn --batch 256 > "$out/cnn.txt"
/usr/bin/python3 - "$out" "$threads" "${PEER_OPENBLAS_CORETYPE:-auto}" <<'PY'
import json, re, sys
out, threads, core = sys.argv[1], sys.argv[2], sys.argv[3]
ours = {b["run_name"].split("/real_time")[0]: b["real_time"] for b in json.load(open(out + "/ours.json"))["benchmarks"]
        if b.get("aggregate_name") == "median"}
def peer(name):
    t = open(f"{out}/{name}.txt").read()
    get = lambda k: float(re.search(k + r"\s+([0-9.]+)", t).group(1)) * 1e3
    return get("gradient_s"), min(get("fvp_forward_ad_s"), get("fvp_double_backward_s"))
for model, key in (("mlp", "mlp"), ("cnn", "cnn")):
    g, f = ours[f"{key}/gradient"], ours[f"{key}/fvp_exact"]
    pg, pf = peer(model)
    print(f"{model}: natgrad gradient {g:.1f} ms, fvp {f:.1f} ms (fvp/gradient {f/g:.2f}); "
          f"pytorch gradient {pg:.1f} ms, best fvp {pf:.1f} ms (fvp/gradient {pf/pg:.2f}); "
          f"natgrad fvp is {pf/f:.1f}x faster  [threads {threads}, peer OpenBLAS core {core}]")
print(f"gemm/1024 {ours['gemm/1024/1024']:.2f} ms")
PY
