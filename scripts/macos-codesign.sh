#!/usr/bin/env bash
# Signs the clawpen binary with the com.apple.security.virtualization
# entitlement (ad hoc, or with CODESIGN_IDENTITY), which Virtualization.framework
# requires before it creates a VM. Run after every build on the Mac:
#   cargo build --release -p clawpen-supervisor && scripts/macos-codesign.sh
# Usage: scripts/macos-codesign.sh [BINARY]   (default: target/release/clawpen)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(uname -s)" != Darwin ]; then
  echo "macos-codesign: only needed (and only possible) on macOS" >&2
  exit 2
fi
binary="${1:-target/release/clawpen}"
if [ ! -x "$binary" ]; then
  echo "macos-codesign: $binary not found; build it first (cargo build --release -p clawpen-supervisor)" >&2
  exit 2
fi
entitlements=scripts/macos/clawpen.entitlements
codesign --force --sign "${CODESIGN_IDENTITY:--}" --entitlements "$entitlements" "$binary"
# Show that the entitlement is there (fails the script if it is not).
codesign -d --entitlements - "$binary" 2>/dev/null | grep -q com.apple.security.virtualization
echo "macos-codesign: signed $binary with $entitlements"
