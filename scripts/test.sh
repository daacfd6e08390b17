#!/usr/bin/env bash
# Runs every multinic test: formatting, lints, unit, integration and
# end-to-end tests with real parts (a private mariadbd, netplan generate).
#
# Installs what the tests need when it is missing (Debian/Ubuntu, as root or
# with sudo). Under CI=true nothing may be skipped: a test whose requirement
# is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

need=()
have mariadbd || need+=(mariadb-server)
have netplan || need+=(netplan.io)
have ip || need+=(iproute2)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
export PATH="$PATH:/usr/sbin:/sbin"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
log "all tests passed"
