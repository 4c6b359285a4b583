#!/usr/bin/env bash
# Runs the C ABI tests (tests/c/api_test.c, and tests/c/jobs_test.c when present) under valgrind
# memcheck: no definite or indirect leaks, no invalid reads/writes, no use of uninitialised memory.
# ("Still reachable" blocks are Rust's thread-local and once-initialised globals; they are not leaks.)
#
#   scripts/valgrind.sh                 # builds the debug cdylib (cargo build --lib), then runs both
#   scripts/valgrind.sh api_test        # only the named test(s)
#   AP_LIB_DIR=target/release scripts/valgrind.sh   # uses an existing library, builds nothing
#
# Runtime (2 busy cores, debug library): api_test about 5 min, jobs_test about 15 min (its 100-step
# job dominates); much less on an idle machine.
#
# Exit status: 0 clean, 99 valgrind found errors or leaks, anything else a build or test failure.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n "${AP_LIB_DIR:-}" ]]; then
    lib=$(cd "$AP_LIB_DIR" && pwd)
else
    cargo build --lib --quiet --manifest-path "$root/Cargo.toml"
    lib="$root/target/debug"
fi
[[ -f "$lib/libautopipeline.so" ]] || { echo "valgrind.sh: no libautopipeline.so in $lib" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/ap-valgrind.XXXXXX")
trap 'rm -rf "$work"' EXIT
data="$root/tests/data"

run() {
    local name=$1; shift
    cc -std=c99 -g -O0 -Wall -Wextra -Werror -pedantic -I"$root/include" "$root/tests/c/$name.c" \
        -L"$lib" -Wl,-rpath,"$lib" -lautopipeline -o "$work/$name"
    echo "== valgrind $name" >&2
    local start=$SECONDS
    valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect \
        --errors-for-leak-kinds=definite,indirect --error-exitcode=99 \
        --track-origins=yes "$work/$name" "$@"
    echo "== $name: clean ($((SECONDS - start)) s)" >&2
}

tests=("$@")
[[ ${#tests[@]} -gt 0 ]] || tests=(api_test jobs_test)
for t in "${tests[@]}"; do
    case $t in
        api_test) run api_test "$data/checkpoints/sd15-tiny" "$data/unsupported" "$work/out.png" ;;
        jobs_test) if [[ -f "$root/tests/c/jobs_test.c" ]]; then run jobs_test "$data/checkpoints/sd15-tiny"; fi ;;
        *) echo "valgrind.sh: unknown test $t (api_test, jobs_test)" >&2; exit 2 ;;
    esac
done
