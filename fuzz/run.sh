#!/bin/sh
# Builds the fuzz binary with cargo-afl (AFL++ instrumentation on stable Rust) and runs every
# target for FUZZ_SECS seconds (default 60), two at a time, from its committed seed corpus.
# Fails when a target crashes (a panic or a violated property); the crashing inputs are
# copied to fuzz/findings/<target>/ — fix the bug, then move them to fuzz/regressions/<target>/
# so `cargo test --test fuzz_corpus` replays them for good.
set -eu
cd "$(dirname "$0")"
secs="${FUZZ_SECS:-60}"
out="${FUZZ_OUT:-${TMPDIR:-/tmp}/miauflix-fuzz}"
command -v cargo-afl >/dev/null || { echo "fuzz/run.sh: cargo-afl is missing (cargo install cargo-afl --locked)"; exit 1; }
cargo afl build --release --quiet
targets="canonical cookies forwarded jwt sealed admin_line config nordvpn stream_key restore"
rm -rf "$out"
mkdir -p "$out"
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 AFL_QUIET=1
run() {
  cargo afl fuzz -V "$secs" -i "corpus/$1" -o "$out/$1" -- target/release/fuzz "$1" >"$out/$1.log" 2>&1 || {
    echo "fuzz/run.sh: afl-fuzz failed on $1:"; tail -20 "$out/$1.log"; return 1; }
}
# shellcheck disable=SC2086 # one word per target
set -- $targets
while [ $# -gt 0 ]; do
  first=$1; shift
  if [ $# -gt 0 ]; then
    second=$1; shift
    run "$first" & p1=$!
    run "$second" & p2=$!
    wait $p1; wait $p2
  else
    run "$first"
  fi
done
status=0
printf '%-12s %12s %10s %8s %8s\n' target execs execs/s corpus crashes
for t in $targets; do
  stats="$out/$t/default/fuzzer_stats"
  v() { sed -n "s/^$1 *: *//p" "$stats"; }
  printf '%-12s %12s %10s %8s %8s\n' "$t" "$(v execs_done)" "$(v execs_per_sec)" "$(v corpus_count)" "$(v saved_crashes)"
  if [ "$(v saved_crashes)" != 0 ]; then
    mkdir -p "findings/$t"
    cp "$out/$t/default/crashes/"id:* "findings/$t/"
    echo "fuzz/run.sh: $t crashed; inputs in fuzz/findings/$t/ (replay: target/release/fuzz $t < input)"
    status=1
  fi
done
exit $status
