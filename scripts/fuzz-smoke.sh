#!/usr/bin/env bash
# Fuzz smoke test: build every cargo-fuzz target in fuzz/ and run each one for
# a short time; exit non-zero if any target crashes (panic, failed assertion,
# sanitizer report, timeout, out-of-memory).
#
# Works on the STABLE toolchain: cargo-fuzz needs `-Z` flags (sanitizer),
# which stable rustc accepts when RUSTC_BOOTSTRAP=1 is set. Cargo caches
# "rustc --print" answers in fuzz/target/.rustc_info.json keyed without that
# variable, so a run once made WITHOUT it leaves a cached failure ("the option
# `Z` is only accepted on the nightly compiler") that later runs would replay;
# CARGO_CACHE_RUSTC_INFO=0 turns that cache off.
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 20)
#   FUZZ_TARGETS    space-separated targets (default: all, from `cargo fuzz list`)
#   FUZZ_SANITIZER  address (default) | none | leak  (`none` runs ~5x more inputs)
#
# Corpora grow in fuzz/corpus/<target>/ and crashes land in
# fuzz/artifacts/<target>/ (both git-ignored); the tracked seeds in
# fuzz/seeds/<target>/ and the dictionary fuzz/keywheel.dict are read only.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

seconds=${FUZZ_SECONDS:-20}
sanitizer=${FUZZ_SANITIZER:-address}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz not found, installing it (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi
echo "fuzz-smoke: $(cargo fuzz --version), $(rustc --version)"

export RUSTC_BOOTSTRAP=1
export CARGO_CACHE_RUSTC_INFO=0

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz-smoke: no fuzz targets found" >&2
    exit 1
fi

# -a: debug assertions and overflow checks, so arithmetic slips also crash.
build_flags=(--sanitizer "$sanitizer" --debug-assertions)
echo "fuzz-smoke: building ${targets[*]} (sanitizer: $sanitizer)"
cargo fuzz build "${build_flags[@]}"

logdir=$root/fuzz/target/smoke
mkdir -p "$logdir"
failed=()
for target in "${targets[@]}"; do
    corpus=$root/fuzz/corpus/$target
    mkdir -p "$corpus"
    dirs=("$corpus")
    [ -d "$root/fuzz/seeds/$target" ] && dirs+=("$root/fuzz/seeds/$target")
    log=$logdir/$target.log
    echo "fuzz-smoke: running $target for ${seconds}s (log: ${log#"$root"/})"
    status=0
    cargo fuzz run "${build_flags[@]}" "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -dict="$root/fuzz/keywheel.dict" \
        -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    # Belt and braces: also look for a crash report in the log.
    if [ "$status" -ne 0 ] || grep -qE '^==[0-9]+== ?ERROR|panicked at|Test unit written to' "$log"; then
        echo "fuzz-smoke: $target FAILED (exit $status); last lines of the log:"
        tail -n 60 "$log"
        failed+=("$target")
    else
        grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::number_of_executed_units|^stat::peak_rss_mb' "$log" | sed "s/^/  $target: /"
        echo "fuzz-smoke: $target ok"
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz-smoke: crashes in: ${failed[*]}; reproduce with:"
    for target in "${failed[@]}"; do
        for artifact in "$root/fuzz/artifacts/$target"/*; do
            [ -e "$artifact" ] || continue
            echo "  RUSTC_BOOTSTRAP=1 CARGO_CACHE_RUSTC_INFO=0 cargo fuzz run ${build_flags[*]} $target ${artifact#"$root"/}"
        done
    done
    exit 1
fi
echo "fuzz-smoke: all ${#targets[@]} targets ran ${seconds}s each without a crash"
