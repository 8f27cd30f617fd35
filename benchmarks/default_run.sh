#!/usr/bin/env bash
# The default run (solve-natural-gradient with no arguments: its top-10 spectrum and a CG solve to 1e-6 at
# λ = 1e-3) of two builds, alternately, round after round: products (CG + Lanczos + condition number), wall
# time, and how far the two directions lie apart. For example main before and after a solver change:
#
#   bash benchmarks/default_run.sh OLD_BUILD_DIR NEW_BUILD_DIR [rounds] [threads]
set -euo pipefail
old=$1
new=$2
rounds=${3:-5}
threads=${4:-2}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $threads threads"
for r in $(seq 1 "$rounds"); do
  for side in old new; do
    dir=$old
    [ "$side" = new ] && dir=$new
    OMP_NUM_THREADS=$threads "$dir/apps/solve-natural-gradient" --quiet --report "$out/${side}_$r.json" \
      --output "$out/${side}_$r.safetensors" > /dev/null
  done
done
/usr/bin/python3 - "$out" "$rounds" <<'PY'
import json, statistics, struct, sys
import numpy as np
out, rounds = sys.argv[1], int(sys.argv[2])
def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return np.concatenate([np.frombuffer(b[8 + n + t["data_offsets"][0]:8 + n + t["data_offsets"][1]], np.float32)
                           for k, t in sorted(h.items()) if k != "__metadata__"]).astype(np.float64)
def summary(side):
    rows = []
    for r in range(1, rounds + 1):
        j = json.load(open(f"{out}/{side}_{r}.json"))
        cg, lanczos = j["cg"]["products"], j["spectrum"]["matvecs"]
        cond = j.get("condition", {}).get("matvecs")  # (older builds do not report it)
        rows.append((cg, lanczos, cond, j["timing_s"]["total"], j["cg"]["relative_residual"]))
    return rows
old, new = summary("old"), summary("new")
for name, rows in (("old", old), ("new", new)):
    cg, lz, cond, t, res = rows[0][0], rows[0][1], rows[0][2], [x[3] for x in rows], rows[0][4]
    total = cg + lz + (cond or 0)
    print(f"{name}: CG {cg} + Lanczos {lz} + condition number {cond if cond is not None else 'n/a (not reported)'}"
          f" = {total} products; |r|/|b| = {res:.3e}; wall time median {statistics.median(t):.3f} s "
          f"[{min(t):.3f}, {max(t):.3f}]")
ratios = [n[3] / o[3] for o, n in zip(old, new)]
po = old[0][0] + old[0][1] + (old[0][2] or 0)
pn = new[0][0] + new[0][1] + (new[0][2] or 0)
print(f"products new / old: {pn / po:.3f}; wall time new / old per round: "
      + " ".join(f"{x:.3f}" for x in ratios) + f"; median {statistics.median(ratios):.3f}")
a, b = load(f"{out}/old_1.safetensors"), load(f"{out}/new_1.safetensors")
print(f"directions: |d_new - d_old| / |d_old| = {np.linalg.norm(a - b) / np.linalg.norm(a):.2e}")
PY
