#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a bounded time: CI's fuzzing (test.sh's host part).
#
#   fuzz/run.sh [SECONDS_PER_TARGET]     (default 20)
#
# Installs cargo-fuzz if it is missing. Builds with the nightly toolchain when it is there,
# else with the stable one; with coverage instrumentation only by default (the code under
# test is safe Rust; a cold build is then about a fifth cheaper), with AddressSanitizer when
# RUNBOX_FUZZ_SANITIZER=address (nightly only), as for long runs by hand. Each
# target starts from the committed seed corpus (fuzz/corpus/TARGET) and writes what it finds
# to a scratch directory, never to the tree; a crash or an oracle's panic fails the run, and
# the input that did it is kept (its path is printed) for fuzz/corpus and a regression test.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz/run.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
toolchain=(+nightly)
sanitizer=${RUNBOX_FUZZ_SANITIZER:-none}
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: no nightly toolchain: the stable one, without a sanitizer" >&2
  toolchain=()
  sanitizer=none
fi

scratch=$(mktemp -d /tmp/runbox-fuzz.XXXXXX)
start=$(date +%s)
cargo "${toolchain[@]}" fuzz build -O -s "$sanitizer"
built=$(date +%s)
echo "fuzz/run.sh: built in $((built - start)) s" >&2

failed=()
for target in $(cargo "${toolchain[@]}" fuzz list); do
  mkdir -p "$scratch/corpus/$target" "$scratch/artifacts/$target"
  max_len=16384
  [ "$target" = layer_tar ] && max_len=65536
  # In-process and single-threaded (no -jobs, whose workers log to files in the tree).
  if ! cargo "${toolchain[@]}" fuzz run -O -s "$sanitizer" "$target" \
      "$scratch/corpus/$target" "corpus/$target" -- \
      -max_total_time="$secs" -max_len="$max_len" -timeout=20 -rss_limit_mb=2048 \
      -malloc_limit_mb=1024 -print_final_stats=1 \
      -artifact_prefix="$scratch/artifacts/$target/" 2> "$scratch/$target.log"; then
    failed+=("$target")
    tail -n 60 "$scratch/$target.log" >&2
    echo "fuzz/run.sh: $target FAILED; its input: $(ls -d "$scratch/artifacts/$target/"* 2>/dev/null)" >&2
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$target.log" | grep -o '[0-9]*$' || true)
  echo "fuzz/run.sh: $target: ${runs:-?} executions in ${secs} s" >&2
done
echo "fuzz/run.sh: fuzzed in $(( $(date +%s) - built )) s" >&2
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz/run.sh: FAILED: ${failed[*]} (inputs under $scratch/artifacts)" >&2
  exit 1
fi
rm -rf "$scratch"
