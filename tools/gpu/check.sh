#!/usr/bin/env bash
# The GPU half of issue #4, run ON the GPU machine from the repository root, with .gpu/ and
# .whl/ carried there (made by tools/gpu/prepare.sh). Steps (STEPS, default all of them):
#   dparity  tools/gpu/diffusers_parity.py: diffusers' own error against the fixture in f32
#            (strict / torch default / TF32), f16 and bf16 on this card: the reference column;
#   parity   `ddrep parity` on the tiny diffusers fixture in f32, f16 and bf16 on CUDA;
#   sample   `ddrep sample --method ddrep` end to end on the tiny model in f16;
#   bench    `ddrep bench unet` in each of BENCH_PRECISIONS (default f16 f32 bf16), diffusers
#            beside it on the same card in the same dtype (ddrep prints the ratio);
#   profile  one SD1.5-size UNet eval (f16) with cubecl's kernel profiler: time per kernel;
#   fusion   the cuda-fusion binary: parity f16 and f32, and `ddrep bench unet` f16;
#   im2col   DDREP_GPU_CONV=im2col (convs as im2col + tensor-core matmul): parity f16 and f32,
#            and `ddrep bench unet` f16.
# The binaries are built with burn's autotune (the `cuda` feature): the first eval of each
# shape times the candidate kernels, so the steps' caps leave room for that.
# Everything is written to $OUT (or ./gpu-out): at most 8 files come back, and these are 8.
set -u
OUT=${OUT:-gpu-out}
STEPS=" ${STEPS:-dparity parity sample bench profile fusion im2col} "
mkdir -p "$OUT"
unpack() { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2" && chmod +x "$2"; }
B=/tmp/ddrep-cuda
BF=/tmp/ddrep-cuda-fusion
unpack .gpu/ddrep.xz "$B" || { echo "cannot unpack .gpu/ddrep.xz (run tools/gpu/prepare.sh here first)"; exit 2; }
[ -f .gpu/ddrep-fusion.xz ] && unpack .gpu/ddrep-fusion.xz "$BF"
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
# step and the files of the steps before it still come back.
TOTAL_S=${TOTAL_S:-480}
END=$((SECONDS + TOTAL_S))
cap() { local left=$((END - SECONDS)); [ "$left" -lt 1 ] && left=1; [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
want() { [[ "$STEPS" == *" $1 "* ]]; }
# step FILE CAP_S COMMAND...: runs COMMAND with its timeout, appends its output and exit code.
step() {
    local f="$OUT/$1" c=$2; shift 2
    echo "== $*" | tee -a "$f"
    timeout "$(cap "$c")" "$@" >> "$f.tmp" 2>&1
    echo "exit $?" >> "$f.tmp"
    cat "$f.tmp" >> "$f"; cat "$f.tmp"; rm -f "$f.tmp"
}
# ddrep's autotune cache (src/backend.rs configure_gpu_kernels: <cache dir>/cubecl).
TUNE_DIR="${DDREP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ddrep}/cubecl"
BENCH="bench unet --device cuda --warmup 3 --evals 20 --full-evals 10 --python python3"

want dparity && step diffusers_parity.txt 90 python3 tools/gpu/diffusers_parity.py --device cuda
if want parity; then
    for p in f32 f16 bf16; do step parity.txt 90 "$B" parity --device cuda --precision "$p"; done
fi
if want sample; then
    rm -rf /tmp/ddrep-gpu-sample
    step sample.txt 60 "$B" sample --model sd15 --weights tests/fixtures/sd15_tiny/model --method ddrep --device cuda \
        --precision f16 --prompt "a red bicycle" --cfg 3 --steps 3 --solver-steps 20 --width 32 --depth 1 --embedding 16 \
        --out /tmp/ddrep-gpu-sample
    python3 -c 'import json; r = json.load(open("/tmp/ddrep-gpu-sample/record.json")); print("record:", r["model"], "nfe", r["nfe"], "precision", r["model_config"]["precision"], "seconds", r["seconds"])' >> "$OUT/sample.txt" 2>&1
fi
if want bench; then
    # The first SD1.5 process autotunes every conv, matmul and reduction shape in its warm-up
    # evals (picks are kept in $TUNE_DIR, so later processes of the same binary reuse them).
    for p in ${BENCH_PRECISIONS:-f16 f32 bf16}; do step bench.txt 240 "$B" $BENCH --precision "$p"; done
fi
if want profile; then
    # cubecl reads cubecl.toml from the working directory: profile only this step. Each device
    # sync (one per eval in the bench) prints the table of kernel times since the last one;
    # the last table is the last full SD1.5 eval.
    # The [autotune] line keeps the picks where ddrep puts them without a cubecl.toml, so the
    # bench step's tuning is reused (checked with cubecl-runtime 0.9.0's own parser).
    printf '[profiling.logger]\nlevel = "basic"\nfile = "/tmp/cubecl-profile.log"\nappend = true\n[autotune]\ncache = { file = "%s" }\n' "$TUNE_DIR" > cubecl.toml
    rm -f /tmp/cubecl-profile.log
    step profile.txt 150 "$B" bench unet --device cuda --precision f16 --warmup 2 --evals 1 --full-evals 2 --python /nonexistent
    rm -f cubecl.toml
    python3 - >> "$OUT/profile.txt" 2>&1 <<'EOF'
import re
try:
    text = open("/tmp/cubecl-profile.log", encoding="utf-8", errors="replace").read()
except OSError as e:
    raise SystemExit(f"no profile log: {e}")
blocks = [b for b in text.split("⎺") if "Total" in b]
print(f"{len(blocks)} profile tables; the last (last SD1.5 eval), first 45 rows (name | time | launches | share):")
for line in blocks[-1].splitlines()[:48] if blocks else []:
    if line.startswith("| "):
        cells = [re.sub(r"\s+", " ", c).strip() for c in line.strip().strip("|").split(" | ")]
        print(" | ".join(c if i else c[:110] for i, c in enumerate(cells)))
EOF
fi
if want fusion && [ -x "$BF" ]; then
    for p in f16 f32; do step fusion.txt 90 "$BF" parity --device cuda --precision "$p"; done
    step fusion.txt 180 "$BF" $BENCH --precision f16
fi
if want im2col; then
    for p in f16 f32; do DDREP_GPU_CONV=im2col step im2col.txt 90 "$B" parity --device cuda --precision "$p"; done
    DDREP_GPU_CONV=im2col step im2col.txt 180 "$B" $BENCH --precision f16
fi
# Where the autotune picks went.
{ echo "autotune cache files:"; find "$TUNE_DIR" target -path '*autotune*' -type f 2>/dev/null | head -20; } >> "$OUT/gpu.txt"
