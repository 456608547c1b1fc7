#!/usr/bin/env bash
# tools/setup.sh — installs what ladnn builds with, from Debian's packages, when it is missing.
# Safe to run again: it installs nothing when everything is there.
#   --golden   also PyTorch and torchvision (Debian's, CPU), which write the large golden fixtures
set -euo pipefail

packages=(build-essential cmake libgtest-dev libbenchmark-dev libstb-dev libopenblas-dev
          libcli11-dev nlohmann-json3-dev)
[ "${1:-}" = "--golden" ] && packages+=(python3-torch python3-torchvision python3-numpy)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all build dependencies are installed"
  exit 0
fi
echo "setup: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
