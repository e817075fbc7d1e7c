#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 30) each, from the committed
# seed corpus (only read: new inputs go to a scratch directory, so the tree stays clean). Installs cargo-fuzz if missing
# (bounded). A crash fails the run and leaves its input in fuzz/artifacts/<target>/: turn it
# into a regression test (copy it into fuzz/corpus/<target>/, which the unit tests replay),
# then fix it. Cost measured here: about 6 min to build the targets cold (2 shared cores),
# then 4 x 30 s; about 8.5 min in all.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"

if ! cargo "+$TOOLCHAIN" --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED: no $TOOLCHAIN toolchain (rustup toolchain install $TOOLCHAIN)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "--- installing cargo-fuzz"
  # Bounded so CI stays under its 30 minutes: a registry too slow to build it in time skips the
  # fuzzing loudly (the corpus still replays in the unit tests) rather than failing everything.
  if ! timeout "${FUZZ_INSTALL_SECONDS:-600}" cargo install cargo-fuzz --locked --quiet; then
    echo "fuzz: SKIPPED: cargo-fuzz did not install within ${FUZZ_INSTALL_SECONDS:-600}s"
    exit 0
  fi
fi

echo "--- building the fuzz targets"
started=$(date +%s)
timeout 900 cargo "+$TOOLCHAIN" fuzz build -O
targets=$(cargo "+$TOOLCHAIN" fuzz list)
work=$(mktemp -d /tmp/phx-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
for target in $targets; do
  echo "--- fuzzing $target for ${FUZZ_SECONDS}s"
  mkdir -p "$work/$target"
  # New inputs go to the first (scratch) corpus; the seeds are only read.
  status=0
  timeout $((FUZZ_SECONDS + 120)) cargo "+$TOOLCHAIN" fuzz run -O "$target" \
    "$work/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$work/$target.log" 2>&1 || status=$?
  grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|SUMMARY|Test unit written)" "$work/$target.log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$work/$target.log"
    echo "fuzz: FAIL: $target exited $status; the input is in fuzz/artifacts/$target/"
    exit 1
  fi
done
echo "fuzz: ok ($(( $(date +%s) - started ))s)"
