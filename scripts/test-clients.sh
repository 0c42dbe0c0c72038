#!/usr/bin/env bash
# Installs the real clients the inference tests drive, idempotently:
# the official OpenAI SDKs (PyPI `openai` with its WebSocket extra, npm `openai` + `undici`), `jsonschema`
# (the real-model tests validate call arguments with it), and
# llama.cpp's server from PyPI (`llama-cpp-python[server]`, compiled from
# source: ~6 min the first time, then pip's wheel cache) with `gguf` + `numpy`
# to write the tiny test model.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${CLAWPEN_PYTHON:-python3}

if ! "$python" -c 'import openai, websockets, jsonschema, gguf, numpy, llama_cpp.server' 2>/dev/null; then
  echo "clawpen: installing Python test clients (llama-cpp-python compiles llama.cpp; minutes)" >&2
  # No llava/mtmd library: the tests serve text models, and llama-cpp-python
  # only loads it for multimodal chat handlers.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}" "$python" -m pip install -q \
    'openai[realtime]' jsonschema gguf numpy 'llama-cpp-python[server]'
fi

node_dir=tests/clients/node
if [ ! -f "$node_dir/node_modules/.package-lock.json" ] \
   || [ "$node_dir/package-lock.json" -nt "$node_dir/node_modules/.package-lock.json" ]; then
  echo "clawpen: installing Node test clients" >&2
  npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error
fi
