#!/usr/bin/env python3
"""Summarise a `cargo bench --bench field_crypto` run: medians and target ratios.

Reads criterion's `<criterion dir>/**/new/{benchmark,estimates}.json` (written by
the latest run) and prints

* every benchmark's median time in ns (with criterion's 95 % interval) and its
  fastest sample (per-iteration time of the quickest of criterion's samples: a
  lower envelope that background load on a shared machine disturbs far less
  than the median), and
* the ratios the performance targets are about, with PASS/FAIL:
    encrypt/N   keywheel / raw              <= 1.2
    decrypt/N   keywheel / raw              <= 1.3
    versions/*  1000_versions / 1_version   <= 1.1  (also 1000_versions_oldest)
    blind_index/email  keywheel / raw       <= 1.3
  and, for information, decrypt keywheel / raw_zeroizing (the same wipe on both sides).

Usage: scripts/bench-ratios.py [--check] [CRITERION_DIR]

The criterion directory defaults to $CRITERION_HOME, else
$CARGO_TARGET_DIR/criterion, else `cargo metadata`'s target directory +
/criterion, else ./target/criterion. With --check the exit status is 1 when a
ratio misses its target (benchmarks on a shared machine are noisy: use it for
information, not as a CI gate).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

# (group prefix, numerator id, denominator id, maximum ratio)
TARGETS = [
    ("encrypt/", "keywheel", "raw", 1.2),
    ("decrypt/", "keywheel", "raw", 1.3),
    # Information only: keywheel against a raw decrypt that also wipes its output.
    ("decrypt/", "keywheel", "raw_zeroizing", None),
    ("versions/", "1000_versions", "1_version", 1.1),
    ("versions/", "1000_versions_oldest", "1_version", 1.1),
    ("blind_index/", "keywheel", "raw", 1.3),
    # Information only: the cost of the trim-lowercase normalisation on top.
    ("blind_index/", "keywheel_trim_lowercase", "raw", None),
]


def criterion_dir(arg):
    if arg:
        return Path(arg)
    if os.environ.get("CRITERION_HOME"):
        return Path(os.environ["CRITERION_HOME"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "criterion"
    try:
        out = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return Path(json.loads(out)["target_directory"]) / "criterion"
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError):
        return Path("target") / "criterion"


def load(root):
    """{(group, id): (median, lower, upper, fastest sample)} in ns from every `new/` result."""
    results = {}
    for bench in sorted(root.glob("**/new/benchmark.json")):
        estimates = bench.with_name("estimates.json")
        if not estimates.exists():
            continue
        meta = json.loads(bench.read_text())
        median = json.loads(estimates.read_text())["median"]
        interval = median["confidence_interval"]
        fastest = float("nan")
        sample = bench.with_name("sample.json")
        if sample.exists():
            data = json.loads(sample.read_text())
            fastest = min(t / n for t, n in zip(data["times"], data["iters"]) if n)
        key = (meta["group_id"], meta["function_id"] or "")
        results[key] = (median["point_estimate"], interval["lower_bound"], interval["upper_bound"], fastest)
    return results


def group_order(group):
    """encrypt, decrypt, versions; sizes numerically."""
    kind, _, rest = group.partition("/")
    rank = {"encrypt": 0, "decrypt": 1, "versions": 2}.get(kind, 3)
    size = int(rest) if rest.isdigit() else 0
    return (rank, kind, size, rest)


def id_order(ident):
    """The pair members first (keywheel before raw), then the rest."""
    return ({"keywheel": 0, "raw": 1, "raw_zeroizing": 2, "1_version": 0}.get(ident, 3), ident)


def main(argv):
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    if any(a.startswith("-") for a in args) or len(args) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = criterion_dir(args[0] if args else None)
    results = load(root)
    if not results:
        print(f"no criterion results under {root}; run `cargo bench --bench field_crypto` first", file=sys.stderr)
        return 2

    print(f"criterion results: {root}\n")
    print(f"{'group':<24} {'id':<22} {'median ns':>11} {'95% interval':>20} {'fastest ns':>11}")
    for group, ident in sorted(results, key=lambda k: (group_order(k[0]), id_order(k[1]))):
        median, lower, upper, fastest = results[(group, ident)]
        interval = f"[{lower:.1f}, {upper:.1f}]"
        print(f"{group:<24} {ident:<22} {median:>11.1f} {interval:>20} {fastest:>11.1f}")

    print("\nratio = median / median (PASS/FAIL); 'fastest' = the same ratio of fastest samples, a noise check")
    print(f"{'group':<24} {'ratio':<36} {'value':>6} {'fastest':>8} {'target':>7}  result")
    failures = 0
    groups = sorted({g for g, _ in results}, key=group_order)
    for prefix, num, den, limit in TARGETS:
        for group in groups:
            if not group.startswith(prefix):
                continue
            if (group, num) not in results or (group, den) not in results:
                continue
            ratio = results[(group, num)][0] / results[(group, den)][0]
            fastest = results[(group, num)][3] / results[(group, den)][3]
            label = f"{num} / {den}"
            head = f"{group:<24} {label:<36} {ratio:>6.2f} {fastest:>8.2f}"
            if limit is None:
                print(f"{head} {'-':>7}  info")
                continue
            ok = ratio <= limit
            failures += not ok
            print(f"{head} {'<= ' + str(limit):>7}  {'PASS' if ok else 'FAIL'}")
    print(f"\n{'all ratios within target' if failures == 0 else f'{failures} ratio(s) over target'}")
    return 1 if check and failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
