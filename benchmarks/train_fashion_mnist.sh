#!/bin/bash
# The training comparison of docs/training.md on Fashion-MNIST, every optimizer in one run on one machine:
#   classifier  MLP 784-256-256-10 relu, batch 128, 10 epochs, evaluated every 94 steps (~1/5 epoch);
#               Adam at lr 3e-4, 1e-3, 3e-3; SGD (lr 0.1, momentum 0.9); natgrad with each Fisher kind; kfac;
#   autoencoder 784-1000-500-250-30-250-500-1000-784 sigmoid, linear code, bernoulli on pixels, batch 256,
#               150 s of training each, evaluated every 50 steps; Adam at the three rates, natgrad, kfac.
# Seeds 1..S (default 3); tables of medians by benchmarks/train_table.py. Times exclude evaluation.
#   bash benchmarks/train_fashion_mnist.sh BUILD OUT [seeds] [threads] [classifier|autoencoder|both]
set -euo pipefail
build=${1:?build directory}; out=${2:?output directory}; seeds=${3:-3}; threads=${4:-2}; which=${5:-both}
natgrad=$build/apps/natgrad
data=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def mlp(sizes, act, lik, code=None):
    layers = [{"type": "flatten"}]
    for i in range(len(sizes) - 1):
        layers.append({"type": "linear", "in_features": sizes[i], "out_features": sizes[i + 1]})
        if i < len(sizes) - 2 and sizes[i + 1] != code:
            layers.append({"type": act})
    return {"input_shape": [1, 28, 28], "likelihood": lik, "layers": layers}
json.dump(mlp([784, 256, 256, 10], "relu", "categorical"), open(f"{out}/classifier.json", "w"))
json.dump(mlp([784, 1000, 500, 250, 30, 250, 500, 1000, 784], "sigmoid", "bernoulli", code=30),
          open(f"{out}/autoencoder.json", "w"))
PY
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads, $(date -u)" | tee "$out/machine.txt"
run() {  # tag seed args...
  local tag=$1 seed=$2; shift 2
  "$natgrad" train --data "$data" --seed "$seed" --threads "$threads" --quiet --log "$out/${tag}_s$seed.csv" "$@" \
    > "$out/${tag}_s$seed.out" 2>&1 || echo "$tag seed $seed failed: $(tail -1 "$out/${tag}_s$seed.out")"
}
logs() { local t=$1; ls "$out"/"$t"_s*.csv | paste -sd, -; }
if [ "$which" != autoencoder ]; then
  c=(--model "$out/classifier.json" --batch 128 --epochs 10 --eval-every 94)
  for s in $(seq 1 "$seeds"); do
    for lr in 3e-4 1e-3 3e-3; do run "adam_$lr" "$s" "${c[@]}" --optimizer adam --lr "$lr"; done
    run sgd "$s" "${c[@]}" --optimizer sgd --lr 0.1 --momentum 0.9
    for k in exact mc empirical; do run "natgrad_$k" "$s" "${c[@]}" --optimizer natgrad --fisher "$k"; done
    run kfac "$s" "${c[@]}" --optimizer kfac
  done
  python3 "$here/train_table.py" --accuracy 0.85,0.88 \
    $(for t in adam_3e-4 adam_1e-3 adam_3e-3 sgd natgrad_exact natgrad_mc natgrad_empirical kfac; do echo "$t=$(logs $t)"; done) \
    | tee "$out/classifier.md"
fi
if [ "$which" != classifier ]; then
  a=(--model "$out/autoencoder.json" --autoencoder --batch 256 --epochs 1000 --max-time 150 --eval-every 50)
  for s in $(seq 1 "$seeds"); do
    for lr in 3e-4 1e-3 3e-3; do run "ae_adam_$lr" "$s" "${a[@]}" --optimizer adam --lr "$lr"; done
    run ae_natgrad "$s" "${a[@]}" --optimizer natgrad
    run ae_kfac "$s" "${a[@]}" --optimizer kfac
  done
  python3 "$here/train_table.py" \
    $(for t in ae_adam_3e-4 ae_adam_1e-3 ae_adam_3e-3 ae_natgrad ae_kfac; do echo "$t=$(logs $t)"; done) \
    | tee "$out/autoencoder.md"
fi
