#!/usr/bin/env bash
# The GPU proof in one device call (see benchmarks/README.md for the exact call):
# install stmap and the carried wheels (.whl/, made here by
# `python -m benchmarks.gpu_proof --prepare-wheels`), then run benchmarks/gpu_proof.py
# so that the whole command ends within GPU_PROOF_LIMIT_S seconds (default 470: under
# 8 minutes), writing gpu_proof.json, gpu_proof.md, gpu_proof.log and install.log
# under $OUT. Extra arguments go to gpu_proof.py (e.g. --only bench-vit_l-bf16-compiled).
set -uo pipefail
limit_s=${GPU_PROOF_LIMIT_S:-470}
out=${OUT:-gpu_proof_out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .whl/*.whl . >"$out/install.log" 2>&1 \
  || echo "gpu_proof.sh: the install failed (install.log); the parts will say what is missing"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
deadline=$((limit_s - SECONDS - 10))  # 10 s to write the report and hand it back
exec python3 -m benchmarks.gpu_proof --out "$out" --deadline-s "$deadline" "$@"
