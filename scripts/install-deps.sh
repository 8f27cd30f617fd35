#!/usr/bin/env bash
# Installs natgrad's build and run dependencies from Debian's archive, only those that are missing.
# Needs root (apt-get). Usage: bash scripts/install-deps.sh [--test | --mpi]
# --test adds what only the tests need: python3-torch, for the PyTorch oracle and the exporter's tests (the
# library never depends on it), libopenblas0-pthread, the BLAS Debian's PyTorch then runs its matrix products on
# (without it, the reference BLAS at a few GFLOP/s: a slow oracle and a weak peer for benchmarks/compare_peer.sh),
# libomp-14-dev, the OpenMP runtime of clang, which builds CI's sanitizer stage, and python3-pytest and
# python3-scipy, which the Python package's tests (python/tests) run with. pybind11-dev, python3-dev and
# python3-numpy build the Python package (import natgrad; docs/python.md).
set -euo pipefail
packages=(build-essential cmake libeigen3-dev libspectra-dev librandom123-dev nlohmann-json3-dev libcli11-dev
          zlib1g-dev libgtest-dev libbenchmark-dev dataset-fashion-mnist clang libclang-rt-14-dev pkg-config libplplot-dev
          pybind11-dev python3-dev python3-numpy)
# --mpi adds OpenMPI, for the build with -DNATGRAD_USE_MPI=ON (docs/distributed.md); --test implies it.
[ "${1:-}" = "--test" ] || [ "${1:-}" = "--mpi" ] && packages+=(libopenmpi-dev openmpi-bin)
[ "${1:-}" = "--test" ] && packages+=(python3-torch libopenblas0-pthread libomp-14-dev python3-pytest python3-scipy)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
