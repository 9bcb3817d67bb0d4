#!/usr/bin/env bash
# Build the op library with -fsanitize=address,undefined (BITNET_SANITIZE=ON) into build/sanitize
# and run the kernel tests against it (BITNET_OPS_LIBRARY). Python itself is not instrumented, so
# the ASan runtime is preloaded and leak checking is off (the interpreter never frees everything).
# Any sanitizer report aborts the run with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/sanitize
headers=$(ls -d build/*/ort_headers/root/usr/include/onnxruntime 2>/dev/null | head -n 1 || true)
cmake -S kernels -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBITNET_SANITIZE=ON \
  ${headers:+-DORT_INCLUDE_DIR="$PWD/$headers"} >/dev/null
cmake --build "$build"
export LD_PRELOAD="$(g++ -print-file-name=libasan.so):$(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export BITNET_OPS_LIBRARY="$PWD/$build/libbitnet_ops.so"
exec python3 -m pytest tests/kernels -q -p no:cacheprovider "$@"
