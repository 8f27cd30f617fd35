#!/bin/bash
# The byte-level GPT of the README trained on text with Adam and K-FAC, for the same training time each:
#   corpus  the license texts of Debian's base-files (/usr/share/common-licenses), the files below in this
#           order, concatenated into OUT/corpus.txt (~237 KB: 3650 windows of 65 bytes; the last 10% held out);
#           CORPUS=file uses another text instead;
#   model   the README's GPT (T, d = 64, 64; two blocks, 4 heads, tied head; 120576 parameters): the README's code
#           block run as written, after torch.manual_seed(0), into OUT/gpt/ (PYTHON, default /usr/bin/python3);
#   runs    natgrad train --context 64, batch 32 (2048 predicted bytes a step), seeds 1..N (default 3), S seconds
#           of training each (default 120): adam at lr 3e-4, 1e-3, 3e-3, and kfac with its defaults; one evaluation
#           schedule for all, every K steps, K chosen by a short kfac calibration run (the slowest per step) so
#           that kfac gets about 18 evaluations in S seconds (EVAL_EVERY=K sets it);
#   output  OUT/TAG_sSEED.csv logs, OUT/gpt.md the table (benchmarks/train_table.py: medians over the seeds of
#           the seconds and steps to the test losses LOSSES, default 2.5,2.0, and to the best Adam run's final
#           test loss), OUT/gpt_curves.svg (seed 1's curves).
#   bash benchmarks/train_gpt_text.sh BUILD OUT [seconds] [threads] [seeds]
set -euo pipefail
build=${1:?build directory}; out=${2:?output directory}; seconds=${3:-120}; threads=${4:-2}; seeds=${5:-3}
natgrad=$build/apps/natgrad
python=${PYTHON:-/usr/bin/python3}
losses=${LOSSES:-2.5,2.0}
here=$(cd "$(dirname "$0")" && pwd)
batch=32; context=64
mkdir -p "$out"

# 1. The corpus: a fixed list in a fixed order, no links (GPL, LGPL and GFDL point at files already listed).
if [ -n "${CORPUS:-}" ]; then
  cp -L "$CORPUS" "$out/corpus.txt"
else
  licenses=/usr/share/common-licenses
  files=(Apache-2.0 Artistic BSD CC0-1.0 GFDL-1.2 GFDL-1.3 GPL-1 GPL-2 GPL-3 LGPL-2 LGPL-2.1 LGPL-3 MPL-1.1 MPL-2.0)
  for f in "${files[@]}"; do
    [ -r "$licenses/$f" ] || { echo "train_gpt_text.sh: $licenses/$f is missing (base-files); give a text as CORPUS=file" >&2; exit 1; }
  done
  (cd "$licenses" && cat -- "${files[@]}") > "$out/corpus.txt"
fi
echo "corpus: $(wc -c < "$out/corpus.txt") bytes, sha256 $(sha256sum "$out/corpus.txt" | cut -c1-16)"

# 2. The model: the README's code block that defines the GPT, run as written (from OUT, so its "gpt" directory is
#    OUT/gpt), after torch.manual_seed(0); its T must be the context here.
"$python" - "$here/.." "$out" "$context" <<'PY'
import os, re, sys, torch
repo, out, context = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(os.path.join(repo, "README.md")) as f:
    blocks = re.findall(r"^```python\n(.*?)^```", f.read(), re.S | re.M)
code = [b for b in blocks if "class GPT(" in b]
if len(code) != 1:
    sys.exit("train_gpt_text.sh: README.md has %d python blocks defining class GPT, not one" % len(code))
os.chdir(out)
sys.path.insert(0, os.path.join(repo, "tools"))
torch.manual_seed(0)
scope = {"__name__": "__main__"}
exec(compile(code[0], "README.md (the GPT)", "exec"), scope)
if scope["T"] != context:
    sys.exit("train_gpt_text.sh: the README's GPT reads T = %d bytes, not the context %d" % (scope["T"], context))
PY
echo "model: $out/gpt, weights sha256 $(sha256sum "$out/gpt/weights.safetensors" | cut -c1-16)"

common=(--model "$out/gpt/model.json" --weights "$out/gpt/weights.safetensors" --data "$out/corpus.txt"
        --context "$context" --batch "$batch" --threads "$threads" --epochs 1000 --quiet)
run() {  # tag seed args...
  local tag=$1 seed=$2; shift 2
  "$natgrad" train "${common[@]}" --seed "$seed" --log "$out/${tag}_s$seed.csv" "$@" > "$out/${tag}_s$seed.out" 2>&1 \
    || echo "$tag seed $seed failed: $(tail -1 "$out/${tag}_s$seed.out")"
}
steps_per_s() {  # log: training steps per second of training time
  python3 -c 'import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["kind"] == "step"]
print(len(rows) / max(float(rows[-1]["time_s"]), 1e-9))' "$1"
}

# 3. One evaluation schedule: from kfac's speed over a short run (its inverses every 20 steps included).
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads, $(date -u)" | tee "$out/machine.txt"
if [ -z "${EVAL_EVERY:-}" ]; then
  probe=$(python3 -c "print(max(4.0, $seconds / 20))")
  "$natgrad" train "${common[@]}" --seed 1 --optimizer kfac --max-time "$probe" --eval-every 1000000 \
    --log "$out/probe_kfac.csv" > "$out/probe_kfac.out" 2>&1 \
    || { echo "kfac probe failed: $(tail -1 "$out/probe_kfac.out")" >&2; exit 1; }
  EVAL_EVERY=$(python3 -c "print(max(1, int($(steps_per_s "$out/probe_kfac.csv") * $seconds / 18)))")
fi
echo "evaluation every $EVAL_EVERY steps; $seconds s of training per run; batch $batch, seeds 1..$seeds" | tee -a "$out/machine.txt"
t=(--max-time "$seconds" --eval-every "$EVAL_EVERY")
for s in $(seq 1 "$seeds"); do
  for lr in 3e-4 1e-3 3e-3; do run "adam_$lr" "$s" "${t[@]}" --optimizer adam --lr "$lr"; done
  run kfac "$s" "${t[@]}" --optimizer kfac
done

# 4. The table and the curves.
tags=(adam_3e-4 adam_1e-3 adam_3e-3 kfac)
seed_logs() {  # tag: its logs over the seeds, comma-separated
  local tag=$1 list=() s
  for s in $(seq 1 "$seeds"); do list+=("$out/${tag}_s$s.csv"); done
  (IFS=,; echo "${list[*]}")
}
python3 "$here/train_table.py" --loss "$losses" --loss-of adam_3e-4,adam_1e-3,adam_3e-3 --lowest-loss \
  $(for tag in "${tags[@]}"; do echo "$tag=$(seed_logs "$tag")"; done) | tee "$out/gpt.md"
logs=(); for tag in "${tags[@]}"; do logs+=("$out/${tag}_s1.csv"); done
"$natgrad" plot "${logs[@]}" --labels "$(IFS=,; echo "${tags[*]}")" --x seconds --output "$out/gpt_curves.svg" 2>&1 \
  || echo "no figure (a build without PLplot?)"
