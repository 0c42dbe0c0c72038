#!/usr/bin/env bash
# Installs the host packages clawpen needs on Debian 12 (bookworm), idempotently.
# QEMU comes from bookworm-backports because the machine's qemu-utils is the
# backports 10.0 build and Debian 12's own qemu-system-x86 (7.2) conflicts with it.
# The guest kernel and busybox are *not* installed here: the image builder
# downloads and unpacks their .deb files itself (apt-get download).
# debootstrap (OpenClaw guest root filesystem) and npm (fetches Node.js and
# OpenClaw for that guest; it runs on the guest's pinned Node, so the host's
# Node version does not matter) are for `clawpen image build openclaw`.
# qemu-system-arm (qemu-system-aarch64) and apt's arm64 package lists are for
# the aarch64 guests: `clawpen image build test-guest|openclaw --arch aarch64`
# fetches Debian's arm64 kernel and busybox with apt (hence
# `dpkg --add-architecture arm64`; nothing arm64 is installed on the host)
# and the OpenClaw one finishes its root filesystem in an arm64 builder VM.
set -euo pipefail

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v qemu-img >/dev/null || need+=(qemu-utils)
# curl and openssl: the --tls test's real TLS client and fingerprint check.
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v npm >/dev/null || need+=(npm)
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
[ "${CLAWPEN_SKIP_BROWSER:-}" = 1 ] && need=("${need[@]/chromium*}")

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

backports=/etc/apt/sources.list.d/bookworm-backports.sources
if [ ! -f "$backports" ] && grep -q bookworm /etc/os-release; then
  $sudo tee "$backports" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

# arm64 package lists, for the aarch64 guests' kernel and busybox.
foreign_added=0
if [ "$(dpkg --print-architecture)" != arm64 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $sudo dpkg --add-architecture arm64
  foreign_added=1
fi

# The image builder needs fresh package lists for `apt-get download`.
stamp=/var/lib/apt/lists/.clawpen-updated
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +720 2>/dev/null)" ] || [ ${#need[@]} -gt 0 ] || [ $foreign_added = 1 ]; then
  $sudo apt-get update -qq
  $sudo touch "$stamp"
fi

pkgs=()
for p in "${need[@]}"; do [ -n "$p" ] && pkgs+=("$p"); done
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "clawpen: installing host packages: ${pkgs[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports "${pkgs[@]}" >/dev/null
fi
