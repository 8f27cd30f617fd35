#!/bin/bash
# The training comparison of docs/training.md on Fashion-MNIST, every optimizer in one run on one machine:
#   classifier  MLP 784-256-256-10 relu, batch 128, 10 epochs, evaluated every 94 steps (~1/5 epoch);
#               Adam at lr 3e-4, 1e-3, 3e-3; SGD (lr 0.1, momentum 0.9); natgrad with each Fisher kind; kfac;
#   autoencoder 784-1000-500-250-30-250-500-1000-784 sigmoid, linear code, bernoulli on pixels, batch 256,
#               150 s of training each, evaluated every 50 steps; Adam at the three rates, natgrad, kfac.
# Seeds 1..S (default 3); tables of medians by benchmarks/train_table.py. Times exclude evaluation.
# PyTorch's torch.optim.Adam runs beside them (benchmarks/torch_train_peer.py: the same initial parameters,
# minibatches, evaluations and log) at the same rates and seeds, as torch_adam_* and torch_ae_adam_*, when
# $TORCH_PYTHON (default /usr/bin/python3) imports torch; TORCH_PYTHON=none leaves them out.
#   bash benchmarks/train_fashion_mnist.sh BUILD OUT [seeds] [threads] [classifier|autoencoder|both]
# Environment (to split the comparison over several invocations into one OUT):
#   FIRST_SEED=F       seeds F..S (default 1)
#   CLASSIFIER_TIME=S  a classifier run also stops after S seconds of training (default 60: Adam's 10 epochs take
#                      about 8 s on 2 Zen 4 cores, so the cap only ends second-order runs long out of the 88% race)
#   AE_ADAM_RATES="…"  Adam's rates on the autoencoder (default: 3e-4 1e-3 3e-3)
#   AE_NATGRAD=0       leave the natgrad optimizer out of the autoencoder runs (default 1)
#   AE_KFAC=0          leave kfac out of the autoencoder runs (default 1)
#   TORCH_AE=1         PyTorch's Adam on the autoencoder as well (default 0: the classifier's runs give the ratio)
set -euo pipefail
build=${1:?build directory}; out=${2:?output directory}; seeds=${3:-3}; threads=${4:-2}; which=${5:-both}
natgrad=$build/apps/natgrad
first_seed=${FIRST_SEED:-1}; classifier_time=${CLASSIFIER_TIME:-60}; ae_adam_rates=${AE_ADAM_RATES:-3e-4 1e-3 3e-3}
ae_natgrad=${AE_NATGRAD:-1}; ae_kfac=${AE_KFAC:-1}; torch_ae=${TORCH_AE:-0}
data=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
here=$(cd "$(dirname "$0")" && pwd)
torch_python=${TORCH_PYTHON:-/usr/bin/python3}
if [ "$torch_python" = none ] || ! "$torch_python" -c 'import torch' 2>/dev/null; then torch_python=""; fi
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
peer() {  # tag seed args...: the PyTorch run, its log beside natgrad's
  local tag=$1 seed=$2; shift 2
  "$torch_python" "$here/torch_train_peer.py" --data "$data" --seed "$seed" --threads "$threads" --quiet \
    --log "$out/${tag}_s$seed.csv" "$@" > "$out/${tag}_s$seed.out" 2>&1 \
    || echo "$tag seed $seed failed: $(tail -1 "$out/${tag}_s$seed.out")"
}
logs() { local t=$1; ls "$out"/"$t"_s*.csv | paste -sd, -; }
torch_tags() { if [ -n "$torch_python" ]; then for lr in 3e-4 1e-3 3e-3; do echo "$1$lr"; done; fi; }
if [ "$which" != autoencoder ]; then
  c=(--model "$out/classifier.json" --batch 128 --epochs 10 --eval-every 94 --max-time "$classifier_time")
  for s in $(seq "$first_seed" "$seeds"); do
    for lr in 3e-4 1e-3 3e-3; do run "adam_$lr" "$s" "${c[@]}" --optimizer adam --lr "$lr"; done
    run sgd "$s" "${c[@]}" --optimizer sgd --lr 0.1 --momentum 0.9
    for k in exact mc empirical; do run "natgrad_$k" "$s" "${c[@]}" --optimizer natgrad --fisher "$k"; done
    run kfac "$s" "${c[@]}" --optimizer kfac
    for t in $(torch_tags torch_adam_); do
      peer "$t" "$s" --batch 128 --epochs 10 --eval-every 94 --max-time "$classifier_time" --lr "${t#torch_adam_}"
    done
  done
  python3 "$here/train_table.py" --accuracy 0.85,0.88 --steps-per-epoch 469 \
    $(for t in adam_3e-4 adam_1e-3 adam_3e-3 sgd natgrad_exact natgrad_mc natgrad_empirical kfac $(torch_tags torch_adam_); do
        echo "$t=$(logs $t)"; done) \
    | tee "$out/classifier.md"
fi
if [ "$which" != classifier ]; then
  a=(--model "$out/autoencoder.json" --autoencoder --batch 256 --epochs 1000 --max-time 150 --eval-every 50)
  for s in $(seq "$first_seed" "$seeds"); do
    for lr in $ae_adam_rates; do run "ae_adam_$lr" "$s" "${a[@]}" --optimizer adam --lr "$lr"; done
    if [ "$ae_natgrad" = 1 ]; then run ae_natgrad "$s" "${a[@]}" --optimizer natgrad; fi
    if [ "$ae_kfac" = 1 ]; then run ae_kfac "$s" "${a[@]}" --optimizer kfac; fi
    if [ "$torch_ae" = 1 ]; then
      for t in $(torch_tags torch_ae_adam_); do
        peer "$t" "$s" --autoencoder --batch 256 --epochs 1000 --max-time 150 --eval-every 50 --lr "${t#torch_ae_adam_}"
      done
    fi
  done
  python3 "$here/train_table.py" \
    $(for t in ae_adam_3e-4 ae_adam_1e-3 ae_adam_3e-3 ae_natgrad ae_kfac $(torch_tags torch_ae_adam_); do
        if ls "$out/${t}"_s*.csv > /dev/null 2>&1; then echo "$t=$(logs $t)"; fi; done) \
    | tee "$out/autoencoder.md"
fi
