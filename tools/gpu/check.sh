#!/usr/bin/env bash
# The GPU half of issue #4, run ON the GPU machine from the repository root, with .gpu/ and
# .whl/ carried there (made by tools/gpu/prepare.sh):
#   - `ddrep parity` on the tiny diffusers fixture in f32, f16 and bf16 on CUDA;
#   - `ddrep sample --method ddrep` end to end on the tiny model in f16 (SIREN fit in f32);
#   - `ddrep bench unet` on CUDA in each precision, diffusers beside it on the same card in
#     the same dtype (the ratio is printed by ddrep).
# Everything is written to $OUT (or ./gpu-out). Each step has its own timeout so that one
# hang does not eat the whole device budget; a failing step is reported and the next runs.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
B=/tmp/ddrep-cuda
python3 -c 'import lzma, shutil; shutil.copyfileobj(lzma.open(".gpu/ddrep.xz"), open("/tmp/ddrep-cuda", "wb"))' && chmod +x "$B" || { echo "cannot unpack .gpu/ddrep.xz (run tools/gpu/prepare.sh here first)"; exit 2; }
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
# cudarc opens the driver and NVRTC by name at run time. NVRTC may live only in PyTorch's
# wheels (nvidia/cu13/lib) or the toolkit's lib64; put every folder that holds it on the path.
# (Not the toolkit's stubs/ folder: its libcuda.so is a stub that would shadow the driver.)
for d in $(find /usr/local /opt /usr/lib -name 'libnvrtc.so*' -not -path '*/stubs/*' -printf '%h\n' 2>/dev/null | sort -u); do
    export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$PWD/.gpu/lib"
{
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    echo "commit: $(tr '\n' ' ' < .gpu/commit 2>/dev/null || echo unknown)"
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
} 2>&1 | tee "$OUT/gpu.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/gpu.txt"

# One deadline for the whole script (TOTAL_S, default 480 s, inside the run's timeout_s): each
# step gets at most its own cap and never more than what is left, so that a hang costs one
# step and the files of the steps before it still come back. At most 8 files come back from
# $OUT: gpu.txt, parity_*.txt, sample.txt, bench_*.txt are 8.
TOTAL_S=${TOTAL_S:-480}
END=$((SECONDS + TOTAL_S))
cap() { local left=$((END - SECONDS)); [ "$left" -lt 1 ] && left=1; [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
PARITY_S=${PARITY_S:-45}
SAMPLE_S=${SAMPLE_S:-45}
BENCH_S=${BENCH_S:-150}
for p in f32 f16 bf16; do
    echo "== parity cuda $p"
    timeout "$(cap "$PARITY_S")" "$B" parity --device cuda --precision "$p" > "$OUT/parity_$p.txt" 2>&1
    echo "exit $?" >> "$OUT/parity_$p.txt"
    cat "$OUT/parity_$p.txt"
done
echo "== sample: DDRep with a SIREN on the tiny SD1.5, model in f16 on CUDA (end to end)"
rm -rf /tmp/ddrep-gpu-sample
timeout "$(cap "$SAMPLE_S")" "$B" sample --model sd15 --weights tests/fixtures/sd15_tiny/model --method ddrep --device cuda \
    --precision f16 --prompt "a red bicycle" --cfg 3 --steps 3 --solver-steps 20 --width 32 --depth 1 --embedding 16 \
    --out /tmp/ddrep-gpu-sample > "$OUT/sample.txt" 2>&1
echo "exit $?" >> "$OUT/sample.txt"
python3 -c 'import json; r = json.load(open("/tmp/ddrep-gpu-sample/record.json")); print("record:", r["model"], "nfe", r["nfe"], "precision", r["model_config"]["precision"], "seconds", r["seconds"])' >> "$OUT/sample.txt" 2>&1
cat "$OUT/sample.txt"
for p in ${BENCH_PRECISIONS:-f16 f32 bf16}; do
    echo "== bench unet cuda $p"
    timeout "$(cap "$BENCH_S")" "$B" bench unet --device cuda --precision "$p" --warmup 3 --evals 20 --full-evals 10 --python python3 > "$OUT/bench_$p.txt" 2>&1
    echo "exit $?" >> "$OUT/bench_$p.txt"
    cat "$OUT/bench_$p.txt"
done
