#!/usr/bin/env bash
# Everything the lent GPU machine runs, in one call (device time is scarce): unpack the CUDA build, the
# kernel test binary and the diffusers wheel carried in .gpu/, then the kernel tests, the GPU benchmark,
# the device check and an A/B of our kernels, each under its own time limit. Prepare .gpu/ here first:
#
#   AP_CUDA_TESTS=1 scripts/cuda/build.sh 90 --features cudnn   # target-cuda/release/{libautopipeline.so,cuda_kernels}
#   mkdir -p .gpu/whl && xz -T2 -c target-cuda/release/libautopipeline.so > .gpu/libautopipeline.so.xz
#   xz -T2 -c target-cuda/release/cuda_kernels > .gpu/cuda_kernels.xz
#   scripts/cuda/build.sh 90   # optional fallback without cuDNN, used if the cudnn build cannot load:
#   xz -T2 -c target-cuda/release/libautopipeline.so > .gpu/libautopipeline-nocudnn.so.xz
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .gpu/whl diffusers==0.42.1 importlib_metadata
#
# then run `scripts/cuda/lent_gpu.sh [section ...]` there with `.gpu` carried (sections of
# device_check.py; none: all). Results land in $OUT/results.tgz (one file: the device tool brings back
# at most eight; inside: kernel_tests.log, gpu_bench.txt and the benchmark's files, ab.txt,
# device_check.log and the check's files). Order: kernel tests, benchmark, A/B, device check,
# all within AP_TOTAL_SECONDS. Each kernel test runs in its own process; a kernel whose test fails is
# left out of every later phase's AP_CUDA_KERNELS (kernel_tests.log says which), so that one broken
# kernel does not fail the device check's every case and hide whether the others are right.
#
# AP_BENCH_ARCHS picks the benchmark's architectures (default "sd15 sdxl"; "sd35m flux-schnell" are the
# published SD 3.5 Medium and FLUX.1-schnell in bf16 at 1024² — issues #22 / #23 — which need
# AP_BENCH_SECONDS=540 AP_SIDE_SECONDS=400 and a call of their own: writing their random checkpoints alone
# takes minutes).
# Time limits (seconds): AP_TEST_SECONDS (kernel tests, 90), AP_BENCH_SECONDS (benchmark, 270; 0 skips
# it), AP_CHECK_SECONDS (device check, 240), AP_AB_SECONDS (each A/B run, 60). AP_AB lists
# AP_CUDA_KERNELS settings to measure our side under after the benchmark (default
# "conv,add,geglu,norm,attention,graph conv,add,geglu,norm,cudnn,attention 0": our im2col convolutions
# instead of cuDNN's; no CUDA graph; none of our kernels, candle's alone), for each of AP_AB_ARCHS
# (default "sd15:512 sdxl:1024"). The benchmark's own "ours" row is the default setting (every kernel:
# in a `cudnn` build cuDNN's convolutions, our attention, the UNet step as a CUDA graph).
set -uo pipefail
started=$(date +%s)
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/out}
res=/tmp/ap-results
rm -rf "$res" && mkdir -p "$out" "$res" /tmp/ap
xz -dc .gpu/libautopipeline.so.xz > /tmp/ap/libautopipeline.so
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/ap/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/ap/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
libs=$(python3 -c "import glob,os,site;print(':'.join(sorted({os.path.dirname(p) for sp in site.getsitepackages() for p in glob.glob(os.path.join(sp,'nvidia','**','lib*.so*'),recursive=True)})))")
pack() { tar czf "$out/results.tgz" -C "$res" . ; }
trap pack EXIT
# A cudnn build needs the machine's libcudnn.so.9 (PyTorch's nvidia-cudnn wheel, on $libs): if it
# cannot load, run the build without cuDNN carried next to it rather than lose the call.
if ! LD_LIBRARY_PATH="$libs" python3 -c 'import ctypes,sys; ctypes.CDLL(sys.argv[1])' /tmp/ap/libautopipeline.so \
    > "$res/library_load.log" 2>&1; then
  cat "$res/library_load.log"
  if [ -f .gpu/libautopipeline-nocudnn.so.xz ]; then
    echo "the library does not load (above): using .gpu/libautopipeline-nocudnn.so.xz" | tee -a "$res/library_load.log"
    xz -dc .gpu/libautopipeline-nocudnn.so.xz > /tmp/ap/libautopipeline.so
  fi
fi
# One deadline for the whole call, counted from the script's start (AP_TOTAL_SECONDS, default 540: the
# device tool stops a command at its timeout_s, at most 600 s, and returns only what is under $OUT by
# then; set it below the call's timeout_s), so each phase's limit is the smaller of its own and what is
# left, and the results are packed after every phase.
limit() {
  local left=$(( ${AP_TOTAL_SECONDS:-540} - ($(date +%s) - started) ))
  local r=$(( left < $1 ? left : $1 ))
  echo $(( r < 1 ? 1 : r ))  # never 0: `timeout 0` would mean no limit at all
}
# timeout that also kills (10 s after the TERM) what ignores the TERM, e.g. a process stuck in the driver.
tmo() { timeout -k 10 "$@"; }

failed=""  # our kernels whose test failed there, left out of every later phase's setting
if [ -f .gpu/cuda_kernels.xz ]; then
  xz -dc .gpu/cuda_kernels.xz > /tmp/ap/cuda_kernels && chmod +x /tmp/ap/cuda_kernels
  echo "== kernel tests"
  # Each test in its own process: a kernel that faults leaves a sticky error in its CUDA context,
  # which would fail every later test of the same process and hide which kernel it was.
  phase_end=$(( $(date +%s) + ${AP_TEST_SECONDS:-90} ))
  tests=$(LD_LIBRARY_PATH="$libs" /tmp/ap/cuda_kernels --list 2>"$res/kernel_tests.log" | sed -n 's/: test$//p')
  # run_test NAME [LABEL [KERNELS]]: one test in its own process (under AP_CUDA_KERNELS=KERNELS if
  # given), its result line as "test LABEL ... ok|FAILED".
  run_test() {
    local t=$1 label=${2:-$1} left log rc
    left=$(( phase_end - $(date +%s) ))
    if [ "$left" -lt 1 ]; then
      echo "test $label ... not run (AP_TEST_SECONDS spent)"
      return
    fi
    log=$(AP_CUDA_KERNELS=${3-${AP_CUDA_KERNELS:-}} LD_LIBRARY_PATH="$libs" tmo "$(limit "$left")" \
      /tmp/ap/cuda_kernels --exact "$t" --test-threads 1 2>&1)
    rc=$?
    echo "$log" | sed "s/^test $t \.\.\. /test $label ... /"
    # A process killed by the limit or a crash leaves at most "test NAME ... " without a result.
    grep -Eq "^test $t \.\.\. (ok|FAILED|ignored)" <<< "$log" \
      || echo "test $label ... FAILED (no result: exit status $rc, 124 = timed out)"
  }
  {
    for t in $tests; do run_test "$t"; done
    # The graph once more with every kernel: our attention reading stacked projections' views while
    # captured is what the A/B's `all` row runs.
    if grep -qx graph_replay_matches_eager <<< "$tests"; then
      run_test graph_replay_matches_eager graph_replay_matches_eager_all_kernels all
    fi
  } | tee -a "$res/kernel_tests.log"
  [ -n "$tests" ] || cat "$res/kernel_tests.log"  # the binary did not start: why
  # A kernel fails if its test failed (a timeout counts: a hung kernel); a test not run for lack of time,
  # or not listed (the binary did not start, or a build without cudnn), fails nothing.
  for pair in conv:convolution_columns_match_candle cudnn:convolution_cudnn_matches_candle add:adds_match_candle \
      geglu:geglu_matches_candle norm:group_norm_matches_candle attention:attention_matches_candle \
      graph:graph_replay_matches_eager graph:graph_replay_matches_eager_all_kernels \
      graph:failed_graph_capture_leaves_the_device_usable; do
    name=${pair#*:}
    if grep -q "^test $name \.\.\. FAILED" "$res/kernel_tests.log"; then
      failed="$failed ${pair%%:*}"
    fi
  done
  [ -z "$failed" ] || echo "failed kernels, off from here on:$failed" | tee -a "$res/kernel_tests.log"
  pack
fi
# An AP_CUDA_KERNELS setting less the failed kernels ("all" and the default spelled out as
# src/kernels/cuda/mod.rs defines them in KERNELS and OFF_BY_DEFAULT: keep in step; "0" if none is
# left).
without_failed() {
  local s=$1 out="" k
  [ -z "$failed" ] && { echo "$s"; return; }
  case "$s" in
    all | "" | 1) s=conv,add,geglu,norm,attention,cudnn,graph ;;
  esac
  for k in ${s//,/ }; do
    case " $failed " in *" $k "*) ;; *) out=$out${out:+,}$k ;; esac
  done
  echo "${out:-0}"
}
if [ "${AP_BENCH_SECONDS:-270}" != 0 ]; then
  echo "== benchmark"
  AP_CUDA_KERNELS=$(without_failed "${AP_CUDA_KERNELS:-}") tmo "$(limit "${AP_BENCH_SECONDS:-270}")" \
    bench/gpu.sh /tmp/ap/libautopipeline.so "$res" ${AP_BENCH_ARCHS:-} 2>&1 | tee "$res/gpu_bench.txt"
  pack
fi
# The A/B: our side alone under each AP_CUDA_KERNELS setting, per architecture the benchmark wrote.
for arch_size in ${AP_AB_ARCHS:-sd15:512 sdxl:1024}; do
  arch=${arch_size%%:*} size=${arch_size##*:}
  [ -d "${AP_BENCH_CKPT:-/tmp/ap-bench}/$arch" ] || continue
  echo "== A/B of our kernels, $arch ${size}²"
  for setting in ${AP_AB:-conv,add,geglu,norm,attention,graph conv,add,geglu,norm,cudnn,attention 0}; do
    setting=$(without_failed "$setting")
    [ "$(limit 30)" -ge 30 ] || { echo "(no time left for $arch $setting)"; continue; }
    row=$(AP_CUDA_KERNELS="$setting" LD_LIBRARY_PATH="$libs" AUTOPIPELINE_LIBRARY=/tmp/ap/libautopipeline.so \
      tmo "$(limit "${AP_AB_SECONDS:-60}")" python3 bench/gpu.py measure ours "${AP_BENCH_CKPT:-/tmp/ap-bench}/$arch" "$size" 2>/dev/null | tail -n1)
    echo "$arch AP_CUDA_KERNELS=$setting $row" | tee -a "$res/ab.txt"
  done
  pack
done
echo "== device check"
# AP_CHECK_KERNELS=all checks the kernels that are off by default end to end too. It gets what is left.
if [ "$(limit 30)" -ge 30 ]; then
  AP_CUDA_KERNELS=$(without_failed "${AP_CHECK_KERNELS:-${AP_CUDA_KERNELS:-}}") tmo "$(limit "${AP_CHECK_SECONDS:-240}")" \
    scripts/cuda/device_check.sh /tmp/ap/libautopipeline.so "$res" "$@" > "$res/device_check.log" 2>&1
  grep -E "^==|^   \(" "$res/device_check.log"
else
  echo "(no time left)"
fi
