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
# POSTGRES SETUP: the keywheel-postgres tests read KEYWHEEL_TEST_DATABASE_URL
# (each test creates and drops a database of its own there). Unless it is set
# already, make sure a local server runs — start the installed cluster, or on
# CI install PostgreSQL first — and point the URL at it. Without a server the
# tests fall back to a throwaway initdb cluster, or skip loudly (they fail
# instead when KEYWHEEL_REQUIRE_POSTGRES is set, as .ci/run does).
# ---------------------------------------------------------------------------
# TLS SETUP: the TLS tests (keywheel-postgres and keywheel-cli `tests/tls.rs`)
# start a throwaway cluster of their own with ssl=on and a CA they make with
# rcgen, whatever server the other tests use: they need initdb and pg_ctl
# (the postgresql package; run as the postgres user through runuser when root).
has_initdb() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ -x "$(pg_config --bindir 2>/dev/null)/initdb" ]
}
if ! has_initdb && [ "${CI:-}" = true ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing PostgreSQL (CI: the TLS tests need initdb)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

postgres_answers() {
    command -v psql >/dev/null 2>&1 && psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1
}
if [ -z "${KEYWHEEL_TEST_DATABASE_URL:-}" ]; then
    local_url="postgresql://postgres@127.0.0.1:5432/postgres"
    if ! postgres_answers "$local_url"; then
        if ! command -v pg_ctlcluster >/dev/null 2>&1 && [ "${CI:-}" = true ] && command -v apt-get >/dev/null 2>&1; then
            echo "==> installing PostgreSQL (CI)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        fi
        if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
            pg_version=$(ls /etc/postgresql | sort -V | tail -n 1)
            echo "==> starting PostgreSQL $pg_version"
            pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start 2>/dev/null || true
            for _ in $(seq 1 30); do
                pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && break
                sleep 1
            done
        fi
    fi
    if ! postgres_answers "$local_url" && pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && command -v runuser >/dev/null 2>&1; then
        # A fresh Debian cluster asks for a password over TCP: give the
        # superuser one for the tests (local socket, peer authentication).
        runuser -u postgres -- psql -qc "ALTER ROLE postgres PASSWORD 'keywheel-tests'" >/dev/null 2>&1 || true
        local_url="postgresql://postgres:keywheel-tests@127.0.0.1:5432/postgres"
    fi
    if postgres_answers "$local_url"; then
        export KEYWHEEL_TEST_DATABASE_URL="$local_url"
        echo "==> Postgres tests use $local_url"
    else
        echo "==> no PostgreSQL server reachable; the Postgres tests try a throwaway initdb cluster"
    fi
fi

# ---------------------------------------------------------------------------
# LEGACY TOOLS SETUP: the legacy-format tests (keywheel-core
# `tests/legacy_formats.rs`) check keywheel against values made at test time
# by the real tools: Fernet tokens by Python's `cryptography`, Lockbox values
# by Ruby's `lockbox` gem (Debian `ruby-lockbox`; it needs `ruby` too, which
# the package does not pull in). On CI, install what is missing; the tests
# then fail (CI=true or KEYWHEEL_REQUIRE_LEGACY_TOOLS set) rather than skip
# when a tool is still missing. Elsewhere they skip loudly.
# ---------------------------------------------------------------------------
has_python_cryptography() {
    python3 -c 'import cryptography' >/dev/null 2>&1
}
has_ruby_lockbox() {
    # Lockbox 0.6 does not load these itself.
    ruby -e 'require "stringio"; require "openssl"; require "base64"; require "securerandom"; require "lockbox"' >/dev/null 2>&1
}
if [ "${CI:-}" = true ]; then
    if ! has_python_cryptography; then
        echo "==> installing Python cryptography (CI: the Fernet tests need it)"
        python3 -m pip install --quiet cryptography 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages cryptography 2>/dev/null \
            || { command -v apt-get >/dev/null 2>&1 && apt-get update -qq \
                && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-cryptography >/dev/null; } \
            || true
    fi
    if ! has_ruby_lockbox && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing Ruby and ruby-lockbox (CI: the Lockbox tests need them)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ruby ruby-lockbox >/dev/null; } || true
    fi
fi
if ! has_python_cryptography; then
    echo "!!!!! Python 3 with the cryptography package is missing: the Fernet tests made by it will $(
        [ "${CI:-}" = true ] && echo FAIL || echo SKIP) (pip install cryptography)" >&2
fi
if ! has_ruby_lockbox; then
    echo "!!!!! Ruby with the lockbox gem is missing: the Lockbox tests made by it will $(
        [ "${CI:-}" = true ] && echo FAIL || echo SKIP) (apt-get install ruby ruby-lockbox)" >&2
fi

# KMS AND HSM SETUP: the KEK providers' tests (keywheel-kms-aws,
# keywheel-pkcs11, the CLI's tests/kek_providers.rs) run against a local
# AWS-compatible KMS server (moto, from PyPI) and a SoftHSM2 token (Debian
# package softhsm2). Install them when missing, start one moto server on a free
# port of 127.0.0.1 and initialise a token in a temporary directory; the tests
# find them through KEYWHEEL_TEST_KMS_ENDPOINT and KEYWHEEL_TEST_PKCS11_*.
# Without them the tests start their own, or skip loudly (they fail instead
# when CI=true or KEYWHEEL_REQUIRE_KMS / KEYWHEEL_REQUIRE_PKCS11 is set).
# ---------------------------------------------------------------------------
has_moto() {
    command -v moto_server >/dev/null 2>&1 || python3 -c 'import moto.server' >/dev/null 2>&1
}
if ! has_moto && command -v python3 >/dev/null 2>&1; then
    echo "==> installing moto[server] (the KMS server of the AWS KMS tests)"
    python3 -m pip install -q 'moto[server]' || echo "==> could not install moto: the AWS KMS tests start nothing"
fi
softhsm_module() {
    { dpkg -L libsofthsm2 2>/dev/null || true; } | grep -m1 '/libsofthsm2\.so$' ||
        ls /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so 2>/dev/null | head -n 1 || true
}
if [ -z "$(softhsm_module)" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing softhsm2 (the token of the PKCS#11 tests)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null; } ||
        echo "==> could not install softhsm2: the PKCS#11 tests start nothing"
fi

services_dir=$(mktemp -d)
moto_pid=""
cleanup_services() {
    if [ -n "$moto_pid" ]; then kill "$moto_pid" 2>/dev/null || true; fi
    rm -rf "$services_dir"
}
trap cleanup_services EXIT

if [ -z "${KEYWHEEL_TEST_KMS_ENDPOINT:-}" ] && has_moto; then
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if command -v moto_server >/dev/null 2>&1; then moto=(moto_server); else moto=(python3 -m moto.server); fi
    "${moto[@]}" -H 127.0.0.1 -p "$port" >"$services_dir/moto.log" 2>&1 &
    moto_pid=$!
    for _ in $(seq 1 60); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.5
    done
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        export KEYWHEEL_TEST_KMS_ENDPOINT="http://127.0.0.1:$port"
        echo "==> AWS KMS tests use moto at $KEYWHEEL_TEST_KMS_ENDPOINT"
    else
        echo "==> moto did not start (log: $(cat "$services_dir/moto.log" 2>/dev/null | tail -n 3))"
    fi
fi

module=$(softhsm_module)
if [ -z "${KEYWHEEL_TEST_PKCS11_MODULE:-}" ] && [ -n "$module" ] && command -v softhsm2-util >/dev/null 2>&1; then
    mkdir -p "$services_dir/tokens"
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$services_dir/tokens" \
        >"$services_dir/softhsm2.conf"
    export SOFTHSM2_CONF="$services_dir/softhsm2.conf"
    if softhsm2-util --init-token --free --label keywheel-test --pin 1234 --so-pin 12345678 >/dev/null; then
        export KEYWHEEL_TEST_PKCS11_MODULE="$module" KEYWHEEL_TEST_PKCS11_TOKEN=keywheel-test
        export KEYWHEEL_TEST_PKCS11_PIN=1234
        echo "==> PKCS#11 tests use the SoftHSM2 token keywheel-test ($module, SOFTHSM2_CONF=$SOFTHSM2_CONF)"
    else
        echo "==> could not initialise a SoftHSM2 token"
    fi
fi

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
