#!/usr/bin/env bash
# The kernel benchmarks of one GPU session, in one call, each under its own time budget
# (seconds, from the environment), results under $OUT: quantization backends at the 7B
# shape (speed, batch 1 and 16) then SmolLM2-135M perplexity per backend; bf16 decode
# against the HBM roofline at the 0.5B and llama-3.2-1b shapes; the training kernels
# (pretraining MFU with liger's loss, RWKV on fla, Mamba's scan, NSA); a vision-language
# shape's cost per technique (VLM_S, default 0: about two minutes for smolvlm-256m).
#   OUT=/tmp/out bash benchmarks/gpu_suite.sh
set -u
: "${OUT:?set OUT to a folder}"
: "${QUANT_S:=280}" "${DECODE_S:=100}" "${TRAIN_S:=170}" "${VLM_S:=0}"
# QUANT_ONLY=gemlite:fp8,bnb:int4 limits the quantization cases; QUALITY_S (default 90) is
# kept for the perplexity pass out of QUANT_S; DECODE_SHAPES and DECODE_ENGINES pick the
# roofline cases (e.g. fused@max-autotune-no-cudagraphs: inductor's autotuned Triton matmuls
# with fused epilogues, minutes to compile); set a budget to 0 to skip that benchmark.
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.csv"
[ "$QUANT_S" = 0 ] || python3 benchmarks/quant_backends.py --out "$OUT/quant_backends.json" --budget-s "$QUANT_S" \
    --quality-model smollm2-135m --home "${EFFICIENTLLM_HOME:-/tmp/elhome}" \
    --quality-s "${QUALITY_S:-90}" --only "${QUANT_ONLY:-}" \
    2>&1 | tee "$OUT/quant_backends.log"
[ "$DECODE_S" = 0 ] || python3 benchmarks/bench_decode.py --out "$OUT" --budget-s "$DECODE_S" --only bandwidth,engines \
    --engine-shapes "${DECODE_SHAPES:-qwen2.5-0.5b,llama-3.2-1b}" \
    --engines "${DECODE_ENGINES:-graph,fused@none,fused}" \
    2>&1 | tee "$OUT/bench_decode.log"
[ "$TRAIN_S" = 0 ] || python3 benchmarks/kernels_training.py --out "$OUT" --budget-s "$TRAIN_S" --only steps,nsa \
    --cases transformer+liger_ce,rwkv+fla_wkv,mamba+our_triton_scan,nsa,torch_reference,fla_parallel_nsa,sdpa_dense_causal \
    2>&1 | tee "$OUT/kernels_training.log"
[ "$VLM_S" = 0 ] || timeout "$VLM_S" python3 benchmarks/bench_vlm.py --out "$OUT" \
    --model "${VLM_MODEL:-smolvlm-256m}" 2>&1 | tee "$OUT/bench_vlm.log"
# gemlite's kernel choices for this card, to ship (data/kernel_tuning/) so runs skip tuning
cp -r "${EFFICIENTLLM_HOME:-/tmp/elhome}/kernel_tuning" "$OUT/" 2>/dev/null || true
