#!/usr/bin/env bash
# Cross-compile bisect_lite_runner for Android arm64-v8a (android-21) with the NDK's CMake toolchain.
#
#   ANDROID_NDK=/path/to/android-ndk-r25c \
#   PADDLE_LITE_DIR=/path/to/inference_lite_lib.android.armv8.clang.c++_shared.with_extra.with_cv.opencl/cxx \
#   ./build.sh [BUILD_DIR]
#
# Result: BUILD_DIR/dist/ (default: build/android-arm64-v8a/dist next to this script) holding
# bisect_lite_runner, libpaddle_light_api_shared.so and libc++_shared.so, ready for `adb push`.
# Extra CMake arguments can be given in CMAKE_ARGS, e.g. CMAKE_ARGS=-DBISECT_LITE_NO_OPENCL_API=ON.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build_dir="${1:-$here/build/android-arm64-v8a}"

die() { echo "build.sh: error: $*" >&2; exit 2; }

[ -n "${ANDROID_NDK:-}" ] || die "ANDROID_NDK is not set; point it at an Android NDK (r20 or newer), e.g. export ANDROID_NDK=\$HOME/android-ndk-r25c"
toolchain="$ANDROID_NDK/build/cmake/android.toolchain.cmake"
[ -f "$toolchain" ] || die "ANDROID_NDK=$ANDROID_NDK has no build/cmake/android.toolchain.cmake; is it an NDK directory?"
[ -n "${PADDLE_LITE_DIR:-}" ] || die "PADDLE_LITE_DIR is not set; point it at the Paddle-Lite prebuilt cxx directory, e.g. .../inference_lite_lib.android.armv8.clang.c++_shared.with_extra.with_cv.opencl/cxx"
[ -f "$PADDLE_LITE_DIR/include/paddle_api.h" ] || die "PADDLE_LITE_DIR=$PADDLE_LITE_DIR has no include/paddle_api.h (use its cxx directory)"
[ -f "$PADDLE_LITE_DIR/lib/libpaddle_light_api_shared.so" ] || die "PADDLE_LITE_DIR=$PADDLE_LITE_DIR has no lib/libpaddle_light_api_shared.so"
command -v cmake >/dev/null 2>&1 || die "cmake not found (the NDK's SDK cmake or a system cmake >= 3.10 works)"

# shellcheck disable=SC2086
cmake -S "$here" -B "$build_dir" \
  -DCMAKE_TOOLCHAIN_FILE="$toolchain" \
  -DANDROID_ABI=arm64-v8a \
  -DANDROID_PLATFORM=android-21 \
  -DANDROID_STL=c++_shared \
  -DCMAKE_BUILD_TYPE=Release \
  -DPADDLE_LITE_DIR="$PADDLE_LITE_DIR" \
  ${CMAKE_ARGS:-}
cmake --build "$build_dir" -j "$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"

dist="$build_dir/dist"
mkdir -p "$dist"
cp "$build_dir/bisect_lite_runner" "$PADDLE_LITE_DIR/lib/libpaddle_light_api_shared.so" "$dist/"
libcxx="$(find "$ANDROID_NDK" -path '*aarch64-linux-android*' -name libc++_shared.so 2>/dev/null | head -n 1 || true)"
if [ -n "$libcxx" ]; then
  cp "$libcxx" "$dist/"
else
  echo "build.sh: warning: libc++_shared.so not found under $ANDROID_NDK; push the NDK's arm64 copy by hand" >&2
fi
echo "built $dist:"
ls -l "$dist"
