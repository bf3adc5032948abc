#!/usr/bin/env bash
# The project's test command: every unit, integration and doc test of every
# workspace crate, with all features. Exits non-zero when anything fails.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh some_filter     # extra arguments go to the test runner
#
# Uses cargo-nextest for the unit and integration tests when it is installed
# (faster, per-test isolation) and `cargo test --doc` for the doctests, which
# nextest does not run; without nextest, plain `cargo test` runs both.
# Set KEYWHEEL_TEST_RUNNER=cargo to force plain `cargo test`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# ---------------------------------------------------------------------------
# Services needed by the tests.
#
# POSTGRES SETUP GOES HERE (a later issue adds the Postgres backend): make sure
# a server is running, create the test database/role, and export the URL the
# Postgres tests read. Until then no test needs a service.
# ---------------------------------------------------------------------------

features=(--workspace --all-features)

if [ "${KEYWHEEL_TEST_RUNNER:-}" != cargo ] && cargo nextest --version >/dev/null 2>&1; then
    echo "==> unit + integration tests (cargo nextest)"
    cargo nextest run "${features[@]}" --no-fail-fast "$@"
    echo "==> doctests (cargo test --doc)"
    cargo test "${features[@]}" --doc "$@"
else
    echo "==> all tests, doctests included (cargo test)"
    cargo test "${features[@]}" --no-fail-fast "$@"
fi
