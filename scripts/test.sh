#!/usr/bin/env bash
# Runs every multinic test: formatting, lints, unit, integration and
# end-to-end tests with real parts (a private mariadbd, netplan generate),
# then the Helm chart's tests, the static release build, the two images
# (buildah) and the chart's pods run from those images.
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
have buildah || need+=(buildah)
# The real network daemons the agent's tests run confined (docs/testing.md).
[ -x /lib/systemd/systemd-networkd ] || need+=(systemd)
have dbus-daemon || need+=(dbus)
have udevadm || need+=(udev)
have dbus-monitor || need+=(dbus-bin)
fresh_nm=""
[ -x /usr/sbin/NetworkManager ] || { need+=(network-manager); fresh_nm=1; }
# libnm's own keyfile reader, for every keyfile the agent renders.
/usr/bin/python3 -c 'import gi; gi.require_version("NM", "1.0")' 2>/dev/null || need+=(python3-gi gir1.2-nm-1.0)
# promtool (the alert rules' checks and unit tests) and prometheus (the
# end-to-end alert test runs its own server on loopback).
{ have promtool && have prometheus; } || need+=(prometheus)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # The tests start their own mariadbd, prometheus and NetworkManager
  # (confined to a namespace); nothing the packages ship may start here
  # (NetworkManager would take the machine's own NICs): policy-rc.d 101,
  # "action forbidden", refuses every start during the install, unless the
  # machine already has a policy of its own.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
  fi
  status=0
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" || status=$?
  [ -z "$policy" ] || $sudo rm -f "$policy"
  [ "$status" = 0 ] || exit "$status"
  # Nor at the next boot: the tests run NetworkManager confined, by themselves.
  if [ -n "$fresh_nm" ] && [ -d /run/systemd/system ]; then
    $sudo systemctl disable NetworkManager.service NetworkManager-wait-online.service \
      NetworkManager-dispatcher.service >/dev/null 2>&1 || true
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p multinicctl --no-default-features --locked -- -D warnings  # the operator build, without `demo`

log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

# --- The Helm chart and the images ------------------------------------------

log "chart tests: render, strict lint, Kubernetes schemas, security, values, binaries' flags, alerts (promtool, a real Prometheus)"
# Python packages in a venv under the repo (gitignored), reinstalled when
# charts/multinic/tests/requirements.txt changes.
requirements=charts/multinic/tests/requirements.txt
stamp=.venv/.requirements.sha256
if [ ! -x .venv/bin/python ] || ! sha256sum --status -c "$stamp" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r "$requirements"
  sha256sum "$requirements" >"$stamp"
fi
# The chart tests run the binaries' --help and parse the rendered values with them.
cargo build --locked -q -p multinic-controller -p multinic-agent -p multinicctl
export MULTINIC_BIN_DIR="$PWD/target/debug"
time_start=$SECONDS
.venv/bin/pytest -q charts/multinic/tests -m "not images"
echo "chart tests took $((SECONDS - time_start))s"

case "$(uname -m)" in
  x86_64) triple=x86_64-unknown-linux-gnu; arch=amd64 ;;
  aarch64) triple=aarch64-unknown-linux-gnu; arch=arm64 ;;
  *) echo "no image build for $(uname -m)" >&2; exit 1 ;;
esac
log "static release build for the images ($triple, crt-static; built once, used by both images)"
# Its own target dir, so the debug build above stays valid.
time_start=$SECONDS
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --locked --target "$triple" --target-dir target/static \
  -p multinic-controller -p multinic-agent
echo "static release build took $((SECONDS - time_start))s"

log "images: buildah, Dockerfile.controller and Dockerfile.agent, target prebuilt"
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
export MULTINIC_IMAGE_REVISION="$revision"
for binary in multinic-controller multinic-agent; do
  context=$(mktemp -d)
  cp "target/static/$triple/release/$binary" "$context/"
  image="localhost/$binary:test"
  buildah rmi -f "$image" >/dev/null 2>&1 || true
  buildah bud --isolation chroot --quiet -f "Dockerfile.${binary#multinic-}" --target prebuilt \
    --build-arg TARGETARCH="$arch" --build-arg VERSION="$version" --build-arg REVISION="$revision" \
    -t "$image" "$context" >/dev/null
  rm -rf "$context"
done
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' localhost/multinic-controller:test
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' localhost/multinic-agent:test

log "image tests: --version in each image, contents, size, the chart's pods run from the images"
.venv/bin/pytest -q charts/multinic/tests -m images

log "all tests passed"
