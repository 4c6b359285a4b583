#!/bin/sh
# Installs a built autopipeline into a temporary prefix (static library included) and builds against
# it the way users do: examples/cpp with CMake against the shared and against the static library, and
# examples/c with pkg-config; each program then generates an image from the tiny test checkpoint.
# `cargo test --test bindings` covers the shared library; this adds the static one (slow to link for
# a debug build, hence a separate script).
#
#   scripts/check-install.sh [--profile release|debug]      (needs cmake, pkg-config, cc, c++)
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
profile=release
if [ "${1:-}" = "--profile" ]; then profile=$2; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=$root/tests/data/checkpoints/sd15-tiny

"$root/scripts/install.sh" --profile "$profile" "$work/prefix"

for kind in shared static; do
  mkdir -p "$work/$kind"
  cp "$root/examples/cpp/main.cpp" "$work/$kind/"
  if [ $kind = static ]; then
    sed 's/autopipeline::autopipeline)/autopipeline::autopipeline_static)/' "$root/examples/cpp/CMakeLists.txt" \
      > "$work/$kind/CMakeLists.txt"
  else
    cp "$root/examples/cpp/CMakeLists.txt" "$work/$kind/"
  fi
  cmake -S "$work/$kind" -B "$work/$kind/build" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
  cmake --build "$work/$kind/build" >/dev/null
  "$work/$kind/build/generate" "$model" "a red house" "$work/$kind.png" 2 7
  echo "examples/cpp against the $kind library: ok"
done
if ldd "$work/static/build/generate" 2>/dev/null | grep -q libautopipeline; then
  echo "the static build still needs libautopipeline.so" >&2
  exit 1
fi

export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig"
# shellcheck disable=SC2046
cc -std=c99 -O2 "$root/examples/c/generate.c" $(pkg-config --cflags --libs autopipeline) \
  -Wl,-rpath,"$work/prefix/lib" -o "$work/generate-c"
"$work/generate-c" --model "$model" --prompt "a red house" --steps 2 --seed 7 --out "$work/c.png"
echo "examples/c with pkg-config: ok"
cmp "$work/shared.png" "$work/static.png"
echo "install check passed"
