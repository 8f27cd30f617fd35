#!/usr/bin/env bash
# 1 rank × 2 threads against 2 ranks × 1 thread on mlp/fvp_exact's model and batch, in interleaved rounds,
# with an MPI build (cmake -DNATGRAD_USE_MPI=ON): each round's throughput ratio (2 ranks / 1 rank) and the
# median over rounds, and the time of one sum over the ranks of the MLP's parameter vector.
# Usage: bash benchmarks/mpi_scaling.sh [build-dir] [rounds]
set -euo pipefail
build=${1:-build-mpi}
rounds=${2:-3}
bench=$build/benchmarks/natgrad-mpi-bench
[ -x "$bench" ] || { echo "no $bench: configure with -DNATGRAD_USE_MPI=ON and build natgrad-mpi-bench" >&2; exit 1; }
mpi=(mpirun --allow-run-as-root --bind-to none)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
ratios=()
for r in $(seq "$rounds"); do
  one=$(OMP_NUM_THREADS=2 "${mpi[@]}" -np 1 "$bench" --threads 2)
  two=$(OMP_NUM_THREADS=1 "${mpi[@]}" -np 2 "$bench" --threads 1)
  echo "round $r: $one"
  echo "round $r: $two"
  a=$(sed -E 's/.*, ([0-9.]+) products\/s.*/\1/' <<< "$one")
  b=$(sed -E 's/.*, ([0-9.]+) products\/s.*/\1/' <<< "$two")
  ratios+=("$(python3 -c "print(f'{$b / $a:.3f}')")")
done
echo "throughput of 2 ranks x 1 thread / 1 rank x 2 threads, per round: ${ratios[*]}"
python3 -c "import statistics, sys; v = [float(x) for x in sys.argv[1:]]; print(f'median {statistics.median(v):.3f} [{min(v):.3f}, {max(v):.3f}]')" "${ratios[@]}"
