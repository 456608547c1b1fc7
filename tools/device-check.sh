#!/usr/bin/env bash
# tools/device-check.sh — the CUDA backend's checks on a GPU machine, in one go (issue 3), from a build
# made on a machine without a GPU. Prints a short table last. Budget: under 7 minutes.
#
#   Here (no GPU), once:
#     cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DLADNN_BLAS=OFF
#     cmake --build build-gpu -j2
#     tools/device-check.sh pack build-gpu build-device    # binaries + the shared libraries the GPU
#                                                          # machine may lack, under 64 MiB
#   There (carry build-device):
#     LADNN_BUILD=build-device bash tools/device-check.sh   # or with the build copied as build/
#
# Steps (each under its own time limit, so one hang cannot eat the budget):
#   1. ./ladnn info                         the device, the CUDA/cuDNN/cuBLAS versions
#   2. ladnn_tests --gtest_filter='Cuda*:*Cuda*' with LADNN_CONV/BN/POOL=cudnn, LADNN_GEMM=cublas   (library)
#   3. the same with every family native                                                      (native)
#      (tests that pick the implementation themselves, like tests/cuda_bnpool_test.cpp, run both in each)
#      and, with LADNN_CHECK_IMPLS naming pdl, the native pass with LADNN_PDL=1                  (pdl)
#   4. compute-sanitizer --tool memcheck over the CUDA tests, native kernels, DenseNet-sized cases left
#      out for time (they run the same kernels as the small ones). Skipped with a message when
#      compute-sanitizer is not under /usr/local/cuda/bin or on PATH. The caching allocator rounds
#      blocks up (cuda/allocator.h), so memcheck sees an overrun only past the rounded size; the tests'
#      NaN fill of new blocks (cuda::set_fill_on_allocate, used by the tests) catches unwritten elements.
#   5. cuda_kernels_bench with a short minimum time, JSON kept.
#   6. ladnn bench: the DenseNet-169 training step and inference, beside PyTorch eager when python3 has
#      torch (tools/bench_torch.py); arguments from LADNN_CHECK_LADNN_BENCH_ARGS, time from T_LADNN_BENCH
#      (0 skips it).
#   7. issue 6's comparisons, each its own ladnn bench call (PyTorch off; T_COMPARE seconds each):
#        before      the same rows from an older ladnn binary (LADNN_BEFORE=path), to measure a change
#                    on the same card in the same session
#        cudnn-bn    the same rows with LADNN_BN=cudnn (the library twin of the default, our fused BN-ReLU)
#        memory      batch 64 training with --memory-efficient: the peak-memory goal
#        profile     batch 32 eager training with --profile: the per-op table
#        tf32-off    inference at batches 1 and 32 with LADNN_TF32=0 (at batch 1 cuDNN's FP32 kernels beat
#                    its TF32 ones: 3.19 vs 4.11 ms in run 5)
#        native-conv inference at batches 1 and 32 with LADNN_CONV=native (our convolutions; split-K
#                    forward since 2026-11-27: 31.5 ms at batch 1 before it, run 5)
#        graph-plan  batch-64 training (plain and --memory-efficient) with LADNN_GRAPH_PLAN=1: each graph's
#                    intermediates in one planned arena (cuda/memory_plan.h) instead of a best-fit pool
#        conv1x1     the same rows with LADNN_CONV1X1=cudnn (pointwise convolutions never as cuBLAS GEMMs:
#                    the lever's before), then which 1x1 shapes the default search gave to cuBLAS
#                    (LADNN_CUDNN_LOG=1, inference at batches 1 and 32, counted per pass) and the kernels
#                    a batch-1 inference replay launches (--graph-kernels)
#        graph-profile  the per-op profile of replayed steps (training at 32 and 64, inference at 1 and
#                    32): each graph captured again with its ops' events as graph nodes, GPU time per op
#                    without host gaps (cuda/profiler.h capture timing); the top rows of each table
#        fused       inference at batches 1 and 32 with LADNN_FUSED_CONV=on and =auto (each dense layer as
#                    two kernels, its BatchNorms fused into its convolutions: cuda/fused_conv.cuh and
#                    cuda/fused_conv_tc.cuh), graphed training at 32 and 64 with =auto (the dense blocks'
#                    forward convolutions and, with TF32, the backward ones on cuda/conv_wgrad_tc.cuh and
#                    the flipped-weight data pass), and auto's per-shape choices in those runs
#                    (LADNN_CUDNN_LOG=1), counted per pass
#        bn-split    the same rows with LADNN_BN_KERNEL=split (every native BatchNorm as three kernels: the
#                    one-kernel-per-channel path's before)
#        bn-cluster  the same rows with LADNN_BN_KERNEL=cluster (a channel's values held in registers: one
#                    block, or a cluster of up to 8, reads each value once; not yet auto's)
#        fused-off   the same rows with LADNN_FUSED_CONV=off (the library convolutions only: auto's before)
#        pdl         `ladnn bench` twice, LADNN_PDL=0 then =1 (our kernels with programmatic dependent
#                    launch, cuda/launch.h)
#      (cudnn-bn, bn-split, bn-cluster, fused-off and pdl run `ladnn bench` with LADNN_CHECK_COMPARE_ARGS,
#      default the bench step's arguments, and --torch off)
#        mma         batch 32, training and inference, and how many shapes of each pass Auto gave to each
#                    form of the mma and halo kernels (LADNN_CUDNN_LOG=1: window size and tile)
#        loss-curve  `ladnn bench --loss-curve 50` with LADNN_FUSED_CONV=auto: our first 50 Adam steps beside
#                    PyTorch's from the same weights and batches (the largest |loss difference|)
#        loop        the trainer's graphed loop over host batches at 32 and 64: waiting for each step
#                    ("loop sync", the old `ladnn train --cuda-graph`) against one step ahead ("loop
#                    ahead", pinned slots and queued copies) — what the app loses around the step
# LADNN_CHECK_STEPS picks the steps (comma-separated names: info,tests,sanitizer,kernels,bench,before,
# cudnn-bn,memory,profile,graph-profile,tf32-off,conv1x1,graph-plan,native-conv,fused,bn-split,bn-cluster,
# fused-off,pdl,mma,loss-curve,loop; default all but the comparisons, which need the time of a second call).
# Logs and JSON go to $OUT when it is set (the device tool brings that folder back), else to
# device-check-out/.
#
# Environment: LADNN_BUILD (build folder, default build), LADNN_CHECK_IMPLS (the default implementations
# the test pass runs under: 'library native', the default, any of library, native, pdl), LADNN_CHECK_BENCH_FILTER (a
# --benchmark_filter regex, default all), T_TESTS / T_SANITIZER / T_BENCH (seconds per step).
set -uo pipefail
cd "$(dirname "$0")/.."

# ---- pack mode (run here) ------------------------------------------------------------------------------
if [ "${1:-}" = "pack" ]; then
  src="${2:-build}"
  dest="${3:-build-device}"
  [ -x "$src/ladnn_tests" ] || { echo "pack: no $src/ladnn_tests; build first" >&2; exit 1; }
  rm -rf "$dest"
  mkdir -p "$dest/lib"
  # Only what the checks run (the CPU benches stay behind: the tree that travels is limited to 64 MiB).
  for exe in ladnn ladnn_tests cuda_kernels_bench; do
    [ -x "$src/$exe" ] && cp "$src/$exe" "$dest/"
  done
  # Shared libraries outside glibc and the CUDA libraries (the GPU machine has its own cuDNN and
  # cuBLAS of the same major versions; they are hundreds of MB): OpenMP, Google Benchmark, OpenBLAS
  # (avoid it with -DLADNN_BLAS=OFF: 36 MB), gfortran.
  for exe in "$dest"/*; do
    [ -f "$exe" ] || continue
    ldd "$exe" | awk '/=> \// {print $3}'
  done | sort -u | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
      libcudnn*|libcublas*|libcudart*|libcuda.so*|libnvrtc*|libnvJitLink*) ;;
      *) cp -L "$lib" "$dest/lib/" ;;
    esac
  done
  # The executables travel gzipped: nearly all of their bytes are device code, which gzip takes to a
  # third (75 MiB -> 26 MiB at 0a6a696), and the tree plus the carried folder must stay under 64 MiB.
  # Check mode (or 'tools/device-check.sh unpack DIR') unpacks them on the GPU machine.
  for exe in ladnn ladnn_tests cuda_kernels_bench; do
    [ -f "$dest/$exe" ] && gzip -6 "$dest/$exe"
  done
  ls -l "$dest" "$dest/lib"
  size_mb=$(du -sm "$dest" | cut -f1)
  echo "$dest: ${size_mb} MiB"
  [ "$size_mb" -le 56 ] || echo "warning: over 56 MiB; the device tool carries 64 MiB in all (configure with -DLADNN_BLAS=OFF)"
  exit 0
fi

# Unpacks what pack gzipped, every time (a second or so): an executable left from an older pack is replaced.
unpack() {
  local dir="$1" gz exe
  for gz in "$dir"/*.gz; do
    [ -f "$gz" ] || continue
    exe="${gz%.gz}"
    if gzip -dc "$gz" > "$exe.part" && chmod +x "$exe.part" && mv "$exe.part" "$exe"; then
      echo "unpacked $exe"
    else
      rm -f "$exe.part"
      echo "unpack: could not unpack $gz" >&2
      return 1
    fi
  done
}
if [ "${1:-}" = "unpack" ]; then
  unpack "${2:-build-device}"
  exit $?
fi

# ---- check mode (run on the GPU machine) ----------------------------------------------------------------
B="${LADNN_BUILD:-build}"
OUTDIR="${OUT:-device-check-out}"
mkdir -p "$OUTDIR"
T_INFO=20
T_TESTS="${T_TESTS:-120}"  # per pass; the CUDA tests have grown (tensor-core kernels, every tile)
T_SANITIZER="${T_SANITIZER:-120}"
T_BENCH="${T_BENCH:-90}"
T_COMPARE="${T_COMPARE:-120}"
STEPS=",${LADNN_CHECK_STEPS:-info,tests,sanitizer,kernels,bench},"
want() { case "$STEPS" in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
START=$(date +%s)

# Libraries: what pack bundled, the toolkit's, and cuDNN/cuBLAS from the Python wheels if that is
# where this machine keeps them.
LIBS="$PWD/$B/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib"
wheel_libs=$(timeout 20 python3 -c '
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
for r in roots:
    for d in sorted(glob.glob(os.path.join(r, "*", "lib"))):
        print(d)
' 2>/dev/null)
for d in $wheel_libs; do LIBS="$LIBS:$d"; done
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

section() { printf '\n==== %s (t=%ss)\n' "$1" "$(( $(date +%s) - START ))"; }

section "environment"
unpack "$B" || echo "(the packed executables did not unpack: the steps that need them will say so)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
missing=0
for exe in "$B/ladnn" "$B/ladnn_tests" "$B/cuda_kernels_bench"; do
  if [ ! -x "$exe" ]; then echo "missing $exe"; missing=1; continue; fi
  nf=$(ldd "$exe" | grep "not found")
  if [ -n "$nf" ]; then echo "$exe: unresolved libraries:"; echo "$nf"; missing=1; fi
done
[ "$missing" = 0 ] || echo "(some binaries or libraries are missing: pack here with 'tools/device-check.sh pack')"

if want info; then
  section "1. ladnn info"
  timeout "$T_INFO" "$B/ladnn" info 2>&1 | tee "$OUTDIR/info.txt"
fi

run_tests() {  # name, then environment assignments
  local name="$1"; shift
  section "tests, $name"
  env "$@" timeout "$T_TESTS" "$B/ladnn_tests" --gtest_filter='Cuda*:*Cuda*' --gtest_brief=1 \
      --gtest_output="json:$OUTDIR/tests_$name.json" >"$OUTDIR/tests_$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUTDIR/tests_$name.log"
  echo "exit status $rc"
  echo "$rc" >"$OUTDIR/tests_$name.rc"
}
want tests && for impls in ${LADNN_CHECK_IMPLS:-library native}; do
  case $impls in
    library) run_tests library LADNN_CONV=cudnn LADNN_BN=cudnn LADNN_POOL=cudnn LADNN_GEMM=cublas ;;
    native) run_tests native LADNN_CONV=native LADNN_BN=native LADNN_POOL=native LADNN_GEMM=native ;;
    pdl) run_tests pdl LADNN_CONV=native LADNN_BN=native LADNN_POOL=native LADNN_GEMM=native LADNN_PDL=1 ;;
  esac
done

if want sanitizer; then
section "4. compute-sanitizer memcheck"
CS=""
for c in /usr/local/cuda/bin/compute-sanitizer "$(command -v compute-sanitizer 2>/dev/null)"; do
  [ -n "$c" ] && [ -x "$c" ] && { CS="$c"; break; }
done
if [ -z "$CS" ]; then
  echo "compute-sanitizer not found under /usr/local/cuda/bin or on PATH: memcheck skipped"
  echo "skipped (no compute-sanitizer)" >"$OUTDIR/sanitizer.result"
else
  env LADNN_CONV=native LADNN_BN=native LADNN_POOL=native LADNN_GEMM=native \
    timeout "$T_SANITIZER" "$CS" --tool memcheck --error-exitcode 97 --leak-check no \
    "$B/ladnn_tests" --gtest_filter='Cuda*:*Cuda*:-*DenseNet*' --gtest_brief=1 >"$OUTDIR/sanitizer.log" 2>&1
  rc=$?
  grep -E "ERROR SUMMARY|Invalid|out of bounds|FAILED" "$OUTDIR/sanitizer.log" | head -20
  case $rc in
    0) echo "clean" >"$OUTDIR/sanitizer.result" ;;
    97) echo "ERRORS ($(grep -o 'ERROR SUMMARY: [0-9]* error' "$OUTDIR/sanitizer.log" | tail -1))" >"$OUTDIR/sanitizer.result" ;;
    124) echo "timed out after ${T_SANITIZER}s (inconclusive)" >"$OUTDIR/sanitizer.result" ;;
    *) echo "tests failed under memcheck (exit $rc; $(grep -o 'ERROR SUMMARY: [0-9]* error' "$OUTDIR/sanitizer.log" | tail -1))" >"$OUTDIR/sanitizer.result" ;;
  esac
  cat "$OUTDIR/sanitizer.result"
fi
fi

if want kernels; then
  section "5. benchmarks"
  timeout "$T_BENCH" "$B/cuda_kernels_bench" --benchmark_min_time=0.02 \
    --benchmark_filter="${LADNN_CHECK_BENCH_FILTER:-.}" \
    --benchmark_out="$OUTDIR/bench.json" --benchmark_out_format=json >"$OUTDIR/bench.log" 2>&1
  echo "exit status $?" | tee "$OUTDIR/bench.rc"
  tail -n 5 "$OUTDIR/bench.log"
fi

BENCH_ARGS="${LADNN_CHECK_LADNN_BENCH_ARGS:---steps 20 --warmup 3}"
COMPARE_ARGS="${LADNN_CHECK_COMPARE_ARGS:-$BENCH_ARGS}"  # the compare steps' `ladnn bench` arguments
if want bench; then
  section "6. ladnn bench (issue 6): training step and inference beside PyTorch eager"
  # Kernels not yet run on a GPU are Auto's candidates only under LADNN_HALO_UNCHECKED=1. If this call's
  # library test pass crashed, or failed one of their tests, the bench runs without them: a kernel that
  # faults would take the whole bench (and the session's measurements) with it.
  if [ "${LADNN_HALO_UNCHECKED:-0}" = 1 ] && [ -f "$OUTDIR/tests_library.rc" ] &&
     [ "$(cat "$OUTDIR/tests_library.rc")" != 0 ]; then
    if ! grep -q '^\[==========\] .* ran\.' "$OUTDIR/tests_library.log" ||
       grep -qE '^\[  FAILED  \] .*(Halo|Pointwise|WeightGradient|DataPass|Norm1Fold)' "$OUTDIR/tests_library.log"; then
      echo "the library test pass crashed or failed a new kernel's test: the bench runs without LADNN_HALO_UNCHECKED"
      export LADNN_HALO_UNCHECKED=0
    fi
  fi
  if [ "${T_LADNN_BENCH:-200}" -gt 0 ]; then
    # shellcheck disable=SC2086
    timeout "${T_LADNN_BENCH:-200}" "$B/ladnn" bench $BENCH_ARGS >"$OUTDIR/ladnn_bench.log" 2>&1
    echo "exit status $?" | tee "$OUTDIR/ladnn_bench.rc"
  else
    echo "skipped (T_LADNN_BENCH=0)" >"$OUTDIR/ladnn_bench.log"
  fi
fi

compare() {  # name, then the command (environment assignments first)
  local name="$1"; shift
  section "7. compare: $name"
  env "$@" >"$OUTDIR/compare_$name.log" 2>&1
  local rc=$?
  echo "exit status $rc"
  [ "$rc" = 0 ] || tail -n 5 "$OUTDIR/compare_$name.log"
  sed -n '/^work/,$p' "$OUTDIR/compare_$name.log" | grep -v '^ladnn: '  # (LADNN_CUDNN_LOG's choice lines)
  grep -A40 -E '^op +impl' "$OUTDIR/compare_$name.log" | head -45
}
# shellcheck disable=SC2086
if want before; then
  if [ -x "${LADNN_BEFORE:-}" ]; then
    compare before timeout "$T_COMPARE" "$LADNN_BEFORE" bench $BENCH_ARGS --torch off
  else
    section "7. compare: before"; echo "skipped: LADNN_BEFORE is not an executable ladnn"
  fi
fi
# shellcheck disable=SC2086
want cudnn-bn && compare cudnn-bn LADNN_BN=cudnn timeout "$T_COMPARE" "$B/ladnn" bench $COMPARE_ARGS --torch off
want bn-split && compare bn-split LADNN_BN_KERNEL=split timeout "$T_COMPARE" "$B/ladnn" bench $COMPARE_ARGS --torch off
# shellcheck disable=SC2086
want bn-cluster && compare bn-cluster LADNN_BN_KERNEL=cluster timeout "$T_COMPARE" "$B/ladnn" bench $COMPARE_ARGS --torch off
if want pdl; then  # both settings in this call, one after the other, on the same machine
  # shellcheck disable=SC2086
  compare pdl-off LADNN_PDL=0 timeout "$T_COMPARE" "$B/ladnn" bench $COMPARE_ARGS --torch off
  # shellcheck disable=SC2086
  compare pdl LADNN_PDL=1 timeout "$T_COMPARE" "$B/ladnn" bench $COMPARE_ARGS --torch off
fi
want fused-off && compare fused-off LADNN_FUSED_CONV=off timeout "$T_COMPARE" "$B/ladnn" bench $COMPARE_ARGS --torch off
if want mma; then
  compare mma LADNN_CUDNN_LOG=1 timeout "$T_COMPARE" "$B/ladnn" bench --batches 32 \
    --graph on --torch off --steps 20 --warmup 3
  echo "Auto's mma and halo choices (pass, form: shapes):"
  grep -oE '^ladnn: conv2d_[a-z_]+ .*-> ours (mma|halo)[0-9a-z]+' "$OUTDIR/compare_mma.log" |
    sed -E 's/^ladnn: (conv2d_[a-z_]+) x \([0-9]+, [0-9]+, [0-9]+, [0-9]+\) w \([0-9]+, [0-9]+, ([0-9]+), [0-9]+\).*-> ours ((mma|halo)[0-9a-z]+)/\1 \2x\2 \3/' |
    sort | uniq -c
fi
want memory && compare memory timeout "$T_COMPARE" "$B/ladnn" bench --batches 64 --work train --memory-efficient \
  --torch off --steps 10 --warmup 3
want tf32-off && compare tf32-off LADNN_TF32=0 timeout "$T_COMPARE" "$B/ladnn" bench --batches 1,32 --work infer \
  --graph on --torch off --steps 20 --warmup 3
want native-conv && compare native-conv LADNN_CONV=native timeout "$T_COMPARE" "$B/ladnn" bench --batches 1,32 \
  --work infer --graph on --torch off --steps 20 --warmup 3
if want graph-plan; then
  compare graph-plan LADNN_GRAPH_PLAN=1 timeout "$T_COMPARE" "$B/ladnn" bench --batches 64 --work train \
    --graph on --torch off --steps 10 --warmup 3
  compare graph-plan-memory-efficient LADNN_GRAPH_PLAN=1 timeout "$T_COMPARE" "$B/ladnn" bench --batches 64 \
    --work train --memory-efficient --graph on --torch off --steps 10 --warmup 3
fi
if want conv1x1; then
  # shellcheck disable=SC2086
  compare conv1x1-cudnn LADNN_CONV1X1=cudnn timeout "$T_COMPARE" "$B/ladnn" bench $BENCH_ARGS --torch off
  section "7. conv1x1: the default search's choices (inference, batches 1 and 32)"
  LADNN_CUDNN_LOG=1 timeout "$T_COMPARE" "$B/ladnn" bench --batches 1,32 --work infer --graph on --torch off \
    --steps 5 --warmup 2 --graph-kernels 25 >"$OUTDIR/conv1x1_choices.log" 2>&1
  echo "exit status $?"
  for pass in conv2d_forward conv2d_backward_input; do
    echo "$pass: $(grep -c "^ladnn: $pass .* -> cuBLAS" "$OUTDIR/conv1x1_choices.log") shapes to cuBLAS," \
      "$(grep -c "^ladnn: $pass .*w ([0-9]*, [0-9]*, 1, 1).* -> cuDNN" "$OUTDIR/conv1x1_choices.log") 1x1 shapes to cuDNN"
  done
  grep -E "^ladnn: conv2d_forward .*w \([0-9]+, [0-9]+, 1, 1\)" "$OUTDIR/conv1x1_choices.log" | head -12
  sed -n '/^graph of infer batch 1:/,/other kernels$/p' "$OUTDIR/conv1x1_choices.log"  # what a b1 replay launches
fi
if want fused; then
  # The auto rows log their choices (LADNN_CUDNN_LOG=1), counted and sampled below from the same runs.
  compare fused-on LADNN_FUSED_CONV=on timeout "$T_COMPARE" "$B/ladnn" bench --batches 1,32 --work infer --graph on \
    --torch off --steps 20 --warmup 3
  compare fused-auto LADNN_FUSED_CONV=auto LADNN_CUDNN_LOG=1 timeout "$T_COMPARE" "$B/ladnn" bench --batches 1,32 \
    --work infer --graph on --torch off --steps 20 --warmup 3
  compare fused-auto-train LADNN_FUSED_CONV=auto LADNN_CUDNN_LOG=1 timeout "$T_COMPARE" "$B/ladnn" bench \
    --batches 32,64 --work train --graph on --torch off --steps 10 --warmup 3
  compare fused-auto-train-memory-efficient LADNN_FUSED_CONV=auto timeout "$T_COMPARE" "$B/ladnn" bench --batches 64 \
    --work train --memory-efficient --graph on --torch off --steps 10 --warmup 3
  section "7. fused: auto's choices (inference at batches 1 and 32; training at 32 and 64)"
  for spec in "fused-auto conv2d_bn_eval" "fused-auto-train conv2d_bn_eval" \
    "fused-auto-train conv2d_backward_input" "fused-auto-train conv2d_backward_weight"; do
    set -- $spec
    echo "$1 $2: ours $(grep -cE "^ladnn: $2 .* -> (ours|fused)" "$OUTDIR/compare_$1.log") shapes," \
      "library $(grep -cE "^ladnn: $2 .* -> (library|unfused)" "$OUTDIR/compare_$1.log") shapes"
  done
  grep '^ladnn: conv2d_bn_eval' "$OUTDIR/compare_fused-auto.log" | awk 'NR % 8 == 1' | head -12
  grep -E '^ladnn: conv2d_backward_(input|weight)' "$OUTDIR/compare_fused-auto-train.log" | awk 'NR % 12 == 1' | head -12
fi
if want loss-curve; then  # the issue's "same loss curve as PyTorch", through auto's kernels (forward and backward)
  section "7. loss-curve: 50 Adam steps with LADNN_FUSED_CONV=auto beside PyTorch, same weights and batches"
  LADNN_FUSED_CONV=auto timeout "$T_COMPARE" "$B/ladnn" bench --loss-curve 50 >"$OUTDIR/loss_curve.log" 2>&1
  echo "exit status $?"
  grep -E '^ +(1|10|25|50) |^largest' "$OUTDIR/loss_curve.log"
fi
want loop && compare loop timeout "$T_COMPARE" "$B/ladnn" bench --batches 32,64 --work loop --torch off \
  --steps 20 --warmup 3
if want graph-profile; then
  section "7. graph-profile: GPU time per op inside replayed steps"
  for spec in "train 32,64" "infer 1,32"; do
    set -- $spec
    timeout "$T_COMPARE" "$B/ladnn" bench --work "$1" --batches "$2" --graph on --profile --torch off --steps 5 \
      --warmup 2 >"$OUTDIR/graph_profile_$1.log" 2>&1
    echo "$1 $2: exit status $?"
    awk '/^per-op profile/ {print; n = 18; next} n > 0 {print; n--; next} /^total \(outermost\)/' \
      "$OUTDIR/graph_profile_$1.log"
  done
fi
want profile && compare profile timeout "$T_COMPARE" "$B/ladnn" bench --batches 32 --work train --graph off \
  --profile --torch off --steps 5 --warmup 2

section "summary"
python3 - "$OUTDIR" <<'PY' || echo "(python3 unavailable: see $OUTDIR for the raw logs)"
import json, os, sys
out = sys.argv[1]

def tests(name):
    path = os.path.join(out, f"tests_{name}.json")
    rc = open(os.path.join(out, f"tests_{name}.rc")).read().strip() if os.path.exists(os.path.join(out, f"tests_{name}.rc")) else "?"
    if not os.path.exists(path):
        return f"no result (exit {rc}{', timed out' if rc == '124' else ''})"
    d = json.load(open(path))
    passed = failed = skipped = 0
    failures = []
    for suite in d.get("testsuites", []):
        for t in suite.get("testsuite", []):
            if t.get("result") == "SKIPPED" or t.get("status") == "NOTRUN":
                skipped += 1
            elif t.get("failures"):
                failed += 1
                failures.append(f"{suite['name']}.{t['name']}")
            else:
                passed += 1
    s = f"{passed} passed, {failed} failed, {skipped} skipped (exit {rc})"
    if failures:
        s += "\n      failed: " + ", ".join(failures[:8]) + (" ..." if len(failures) > 8 else "")
    return s

print("CUDA tests")
for name in ("library", "native", "pdl"):
    print(f"  {name:8s} {tests(name)}")
res = os.path.join(out, "sanitizer.result")
print("memcheck   " + (open(res).read().strip() if os.path.exists(res) else "not run"))

path = os.path.join(out, "bench.json")
if not os.path.exists(path):
    print("benchmarks: no result")
    sys.exit(0)
try:
    rows = json.load(open(path)).get("benchmarks", [])
except ValueError:
    print("benchmarks: unreadable JSON (the run was cut short?)")
    sys.exit(0)
# name = op/impl/shape[/variant]; pair each library row with its native twin.
res = {}
for r in rows:
    name = r["name"][: -len("/manual_time")] if r["name"].endswith("/manual_time") else r["name"]
    parts = name.split("/")
    if len(parts) < 3:
        continue
    op, impl, rest = parts[0], parts[1], "/".join(parts[2:])
    if r.get("error_occurred"):
        res[(op, rest, impl)] = ("error", r.get("error_message", "")[:40])
        continue
    unit = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[r.get("time_unit", "ns")]
    rate = r.get("TFLOP/s")
    rate_s = f"{rate:7.1f} TFLOP/s" if rate else (f"{r['GB/s']:7.0f} GB/s" if r.get("GB/s") else "")
    res[(op, rest, impl)] = (r["real_time"] * unit, rate_s)
keys = sorted({(op, rest) for (op, rest, _) in res}, key=lambda k: (k[0], k[1]))
# native = our SIMT kernels; tc = our tensor-core backward convolutions (native-tc rows; "/auto" rows are
# LADNN_FUSED_CONV=auto's pick, ours or the library's).
print(f"\n{'benchmark':44s} {'library ms':>11s} {'rate':>14s} {'native ms':>11s} {'rate':>14s} {'native/lib':>10s}"
      f" {'tc ms':>9s} {'tc/lib':>7s}")
for op, rest in keys:
    lib = next((res[(op, rest, i)] for i in ("cudnn", "cublas", "unfused") if (op, rest, i) in res), None)
    nat = res.get((op, rest, "native"))
    tc = res.get((op, rest, "native-tc"))
    def cell(v):
        if v is None: return f"{'-':>11s} {'':>14s}"
        if v[0] == "error": return f"{'error':>11s} {v[1][:14]:>14s}"
        return f"{v[0]:11.3f} {v[1]:>14s}"
    def ratio(a, b, width):
        return f"{a[0] / b[0]:{width}.2f}" if a and b and a[0] != "error" and b[0] != "error" else f"{'':>{width}s}"
    tc_cell = f"{'':>9s}" if tc is None else (f"{'error':>9s}" if tc[0] == "error" else f"{tc[0]:9.3f}")
    print(f"{(op + '/' + rest)[:44]:44s} {cell(lib)} {cell(nat)} {ratio(nat, lib, 10)} {tc_cell} {ratio(tc, lib, 7)}")
PY
echo
if grep -q '^work ' "$OUTDIR/ladnn_bench.log" 2>/dev/null; then
  sed -n '/^densenet\|^tiny\|^work\|^train\|^infer\|^loss curve\|^largest/p' "$OUTDIR/ladnn_bench.log"
else  # cut short: the rows it measured, as it measured them
  grep -E '^(ladnn|torch) ' "$OUTDIR/ladnn_bench.log" 2>/dev/null
fi
# Auto's convolution choices by group (with LADNN_CUDNN_LOG=1): inference at batch 32, a training step at
# 64 with the growth 3x3s' weight gradients beside the library's (tools/auto_breakdown.py).
if grep -q '^ladnn: conv2d' "$OUTDIR/ladnn_bench.log" 2>/dev/null && command -v python3 >/dev/null; then
  echo
  python3 tools/auto_breakdown.py "$OUTDIR/ladnn_bench.log" --batch 32 2>&1 | tail -6
  python3 tools/auto_breakdown.py "$OUTDIR/ladnn_bench.log" --batch 64 --training -v 2>&1 | tail -40
  if grep -q ' pre 4' "$OUTDIR/ladnn_bench.log"; then  # a LADNN_NORM1_FOLD=1 variant ran: conv1 folded
    echo "(norm1 folded into conv1, LADNN_NORM1_FOLD=1:)"
    python3 tools/auto_breakdown.py "$OUTDIR/ladnn_bench.log" --batch 64 --training --fold 2>&1 | tail -12
  fi
fi
section "done"
