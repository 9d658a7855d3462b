#!/usr/bin/env bash
# Installs the Debian packages Portier and its tests use, when any is missing.
# Runs as root on Debian; does nothing when everything is already there.
set -euo pipefail

# command -> Debian package that provides it
declare -A wanted=(
  [python3]=python3
  [ip]=iproute2
  [radvd]=radvd
  [ndisc6]=ndisc6
  [ping]=iputils-ping
  [nft]=nftables
  [ethtool]=ethtool
  [iperf3]=iperf3
  [tcpdump]=tcpdump
  [ps]=procps
  [setpriv]=util-linux
  [promtool]=prometheus
  [ndppd]=ndppd
  [clang]=clang
)
missing=()
for cmd in "${!wanted[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${wanted[$cmd]}")
done
# headers -> package: the tc program (supervisor/bpf/) is compiled here, never shipped built
declare -A headers=(
  [/usr/include/bpf/bpf_helpers.h]=libbpf-dev
  [/usr/include/linux/bpf.h]=linux-libc-dev
)
for header in "${!headers[@]}"; do
  [ -f "$header" ] || missing+=("${headers[$header]}")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root to install them" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# prometheus is here for promtool, which checks the alert rules; its server is not started.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
