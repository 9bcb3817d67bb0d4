#!/usr/bin/env bash
# Build the op library with -fsanitize=address,undefined (BITNET_SANITIZE=ON) into build/sanitize
# and run the kernel tests against it (BITNET_OPS_LIBRARY), plus any tests named as arguments.
# Python itself is not instrumented, so the ASan runtime is preloaded and leak checking is off (the
# interpreter never frees everything). Any sanitizer report aborts the run with a non-zero exit; it
# is printed as it happens (--capture=sys: pytest's fd capture would swallow it with the process).
# Sessions run without onnxruntime's memory arena (tests/sanitizer_session.py), so an access past a
# tensor is one past a heap allocation.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/sanitize
headers=$(ls -d build/*/ort_headers/root/usr/include/onnxruntime 2>/dev/null | head -n 1 || true)
cmake -S kernels -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBITNET_SANITIZE=ON \
  ${headers:+-DORT_INCLUDE_DIR="$PWD/$headers"} >/dev/null
cmake --build "$build"
export LD_PRELOAD="$(g++ -print-file-name=libasan.so):$(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export BITNET_OPS_LIBRARY="$PWD/$build/libbitnet_ops.so"
# The build must load into onnxruntime: a library the tests could not find would skip them all.
python3 -c "from bitnet_onnx import runtime; runtime.session_options()"
exec python3 -m pytest tests/kernels -q -p no:cacheprovider -p tests.sanitizer_session --capture=sys "$@"
