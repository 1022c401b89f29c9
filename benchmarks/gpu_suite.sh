#!/usr/bin/env bash
# The one prepared GPU run: trains the shipped toy model, then measures at LLaVA-1.5-7B shapes (bf16, random
# weights) FastRM's overhead in generate(), the teacher (lean vs naive) and the distillation pipeline's cost.
# Usage (on a machine with one CUDA GPU, from the repo root): OUT=/some/dir bash benchmarks/gpu_suite.sh
# Each step has its own time limit and writes its log and JSON under $OUT as it finishes.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"

echo "== toy model ==" 
timeout 240 $PY -m hf_fastrm.toy.train --device cuda --steps 7000 --batch-size 256 --max-minutes 2.5 \
  --output-dir /tmp/toy_model > "$OUT/toy_train.log" 2>&1
echo "toy exit $?"; grep -v "^training" "$OUT/toy_train.log" | tail -5
[ -d /tmp/toy_model ] && tar czf "$OUT/toy_model.tar.gz" -C /tmp toy_model

echo "== overhead ==" 
timeout 100 $PY benchmarks/overhead.py --preset llava-7b --device cuda --repeats 5 --json "$OUT/overhead_7b.json" \
  2>&1 | tee "$OUT/overhead_7b.log" | tail -6

echo "== teacher ==" 
timeout 150 $PY benchmarks/teacher.py --preset llava-7b --json "$OUT/teacher_7b.json" > "$OUT/teacher_7b.log" 2>&1
echo "teacher exit $?"; tail -8 "$OUT/teacher_7b.log"

echo "== distill ==" 
timeout 120 $PY benchmarks/distill.py --preset llava-7b --examples 16 --batch-size 4 --max-new-tokens 32 \
  --json "$OUT/distill_7b.json" > "$OUT/distill_7b.log" 2>&1
echo "distill exit $?"; tail -8 "$OUT/distill_7b.log"
