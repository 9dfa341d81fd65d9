#!/usr/bin/env bash
# Build bisect_lite_runner for this Linux x86-64 host against the REAL Paddle-Lite library of a `paddlelite`
# wheel (paddlelite/lite.so exports the C++ light API next to its Python bindings), with bisect-lite's own
# header (host/include: the wheel ships none). Also builds abi_check, which checks that header against the
# library (run it with any .nb this library loads; tests/test_runner_native.py does).
#
#   PYTHON=/path/to/env-with-paddlelite/bin/python ./host/build.sh [OUT_DIR]
#
# Result in OUT_DIR (default: build/host next to runners/android): bisect_lite_runner, abi_check and lib/.
# The host runtime has x86 kernels only: give the runner x86 .nb files (opt --valid_targets=x86).
#
# lite.so needs the Python C API's symbols (its pybind11 module references them, e.g. PyExc_TypeError as
# data, which must resolve when the library is loaded) although the runner never calls Python: the runner
# links the shared libpython of that interpreter. lite.so's SONAME is liblite_pybind.so and it finds its
# own libraries (libiomp5, mklml) through RUNPATH $ORIGIN/libs, so lib/ holds symlinks of both names.
# For tests of the checks themselves: HOST_INCLUDE replaces host/include, TARGETS picks what to build (default
# "bisect_lite_runner abi_check").
# Exit codes: 1 compile or link error, 2 usage, 3 missing tool or library.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/../build/host}"

die() { echo "host/build.sh: error: $2" >&2; exit "$1"; }

[ -n "${PYTHON:-}" ] || die 2 "PYTHON is not set; point it at an interpreter that has the paddlelite wheel (CPython <= 3.10: pip install paddlelite==2.13rc0 \"numpy<2\")"
cxx="${CXX:-g++}"
command -v "$cxx" >/dev/null 2>&1 || die 3 "$cxx not found (set CXX to a C++14 compiler)"

# One interpreter call: the wheel's package directory, then the interpreter's shared libpython.
probe="$("$PYTHON" - <<'EOF' 2>&1
import os, sysconfig
import paddlelite
print("pkg=" + os.path.dirname(os.path.abspath(paddlelite.__file__)))
print("libdir=" + (sysconfig.get_config_var("LIBDIR") or ""))
print("ldlibrary=" + (sysconfig.get_config_var("LDLIBRARY") or ""))
print("version=" + (sysconfig.get_config_var("VERSION") or ""))
EOF
)" || die 3 "$PYTHON cannot import paddlelite: $(echo "$probe" | tail -n 1)"
# Tagged lines: whatever the import prints to stderr (warnings) is mixed into the capture.
pkg="$(sed -n 's/^pkg=//p' <<<"$probe")"
libdir="$(sed -n 's/^libdir=//p' <<<"$probe")"
ldlibrary="$(sed -n 's/^ldlibrary=//p' <<<"$probe")"
pyversion="$(sed -n 's/^version=//p' <<<"$probe")"
[ -f "$pkg/lite.so" ] || die 3 "$pkg has no lite.so (is paddlelite a Linux x86-64 wheel?)"
case "$ldlibrary" in
  *.so*) [ -f "$libdir/$ldlibrary" ] || die 3 "$libdir/$ldlibrary not found" ;;
  *) die 3 "$PYTHON has no shared libpython ($ldlibrary); use an interpreter built with --enable-shared" ;;
esac

mkdir -p "$out/lib"
ln -sfn "$pkg/lite.so" "$out/lib/liblite_pybind.so"
[ -d "$pkg/libs" ] && ln -sfn "$pkg/libs" "$out/lib/libs"
lib="$(cd "$out/lib" && pwd)"

include="${HOST_INCLUDE:-$here/include}"
flags=(-std=c++14 -O2 -Wall -Wextra -Werror -I "$include" -I "$here/..")
link=(-L"$lib" -llite_pybind -Wl,-rpath,"$lib" -L"$libdir" -l"python$pyversion" -Wl,-rpath,"$libdir"
      -Wl,--no-undefined -ldl)
declare -A sources=([bisect_lite_runner]="$here/../bisect_lite_runner.cc" [abi_check]="$here/abi_check.cc")
targets=(${TARGETS:-bisect_lite_runner abi_check})
for t in "${targets[@]}"; do
  [ -n "${sources[$t]:-}" ] || die 2 "unknown target '$t' (bisect_lite_runner, abi_check)"
done
pids=()
for t in "${targets[@]}"; do
  # In parallel: the targets are independent. Written under a temporary name, renamed when complete.
  "$cxx" "${flags[@]}" "${sources[$t]}" -o "$out/$t.tmp" "${link[@]}" &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || die 1 "compiling against $pkg/lite.so failed (see the compiler's messages above)"
for t in "${targets[@]}"; do mv -f "$out/$t.tmp" "$out/$t"; done
echo "built ${targets[*]} in $out against $pkg/lite.so"
