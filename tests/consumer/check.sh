#!/usr/bin/env bash
# Installs the built natgrad into a temporary prefix, then configures, builds and runs a separate project
# that uses it through find_package(natgrad) and natgrad::natgrad; where the build made the Python package, imports
# it from where it was installed.
set -euo pipefail
build_dir=$1
source_dir=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
cmake -S "$source_dir" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release > "$work/configure.log"
cmake --build "$work/build" > "$work/build.log"
"$work/build/consumer"
core=$(find "$work/prefix" -name '_core*.so' -path '*/natgrad/*' | head -1)
if [ -n "$core" ]; then
  site=$(dirname "$(dirname "$core")")
  PYTHONPATH=$site /usr/bin/python3 -c "
import natgrad, sys
assert natgrad.__file__.startswith('$site/'), natgrad.__file__
assert natgrad.num_threads() >= 1
print('the installed Python package imports from', '$site')"
elif [ -d "$build_dir/python/natgrad" ]; then
  echo "the build made the Python package, but cmake --install did not install its module _core" >&2
  exit 1
fi
