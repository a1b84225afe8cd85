#!/usr/bin/env bash
# The GPU half of issue #4, run ON the GPU machine from the repository root, with .gpu/ and
# .whl/ carried there (made by tools/gpu/prepare.sh). Steps run in the order STEPS names them
# (default: all, in this order):
#   bench    the `cuda` binary (fixed kernels; its defaults DDREP_GPU_CONV=implicit-gemm,
#            DDREP_GPU_ATTENTION=blocked): `ddrep bench unet --full-only` in each of
#            BENCH_PRECISIONS (default f16), diffusers beside it on the same card and dtype;
#   parity   `ddrep parity` on the tiny diffusers fixture in f16, f32 and bf16 on CUDA;
#   fusion   the cuda-fusion binary (prepare.sh builds it unless FUSION=0): parity f16, bench
#            f16 (compare with bench's numbers), profile;
#   convs    bench f16 (no diffusers) with each of DDREP_GPU_CONV's other implicit-GEMM
#            kernels (-mma, -async, -async-mma, -tma, -tma-mma);
#   matmuls  the same with each of DDREP_GPU_MATMUL's routines other than `auto` (MATMULS
#            picks some);
#   cublas   DDREP_GPU_MATMUL=cublas and DDREP_GPU_CONV=cublas (src/cublas.rs): parity in f16,
#            f32 and bf16, bench f16 beside diffusers, bench with each switch alone, profile;
#   nsys     with Nsight Systems (when the machine has `nsys`): two SD1.5 f16 evals with the GEMM
#            switches as set (e.g. DDREP_GPU_MATMUL=cublas DDREP_GPU_CONV=cublas), its summary
#            of GPU time per kernel (cuBLAS's too, which cubecl's profiler does not see) and of
#            CUDA API time on the host, into profile.txt;
#   ops      bench f16 (no diffusers) with DDREP_GPU_OPS=burn: burn's op chains for the norms,
#            softmax and GEGLU instead of ddrep's kernels (src/gpu_kernels.rs), then its profile;
#   profile  one SD1.5-size UNet eval (f16) under cubecl's kernel profiler: time per kernel;
#   kernels  the `cuda` binary's other kernel switches, bench f16 without diffusers (compare
#            with bench's numbers): DDREP_GPU_CONV=native and im2col, DDREP_GPU_ATTENTION=flash
#            (with its parity first);
#   dparity  tools/gpu/diffusers_parity.py: diffusers' own error against the fixture in f32
#            (strict / torch default / TF32), f16 and bf16 on this card: the reference column;
#   sample   `ddrep sample --method ddrep` end to end on the tiny model in f16;
#   autotune the cuda-autotune binary (when prepare.sh built it, AUTOTUNE=1): bench f16;
# Autotune (the `cuda-autotune` binary) times every candidate kernel of each new shape, and each
# candidate is JIT-compiled first (~0.8 s of one CPU core each on the H200, 2026-11-26): a
# first process spends minutes before its first eval ends. So ddrep keeps autotune picks and
# compiled kernels (PTX) in its cache dir, and this script carries them between sessions:
# it unpacks .gpu/autotune.tar.xz and .gpu/ptx.tar.xz there when present, and packs them again
# into $OUT at the end (copy them from the device files into .gpu/ for the next session).
# Everything is written to $OUT (or ./gpu-out): at most 8 files come back, and these are 8
# (gpu, bench, parity, profile, variants, dmon .txt; autotune, ptx .tar.xz).
set -u
OUT=${OUT:-gpu-out}
STEPS=${STEPS:-bench parity cublas ops profile fusion convs matmuls kernels dparity sample autotune}
mkdir -p "$OUT"
unpack() { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2" && chmod +x "$2"; }
B=/tmp/ddrep-cuda
BA=/tmp/ddrep-cuda-autotune
BF=/tmp/ddrep-cuda-fusion
unpack .gpu/ddrep.xz "$B" || { echo "cannot unpack .gpu/ddrep.xz (run tools/gpu/prepare.sh here first)"; exit 2; }
[ -f .gpu/ddrep-autotune.xz ] && unpack .gpu/ddrep-autotune.xz "$BA"
[ -f .gpu/ddrep-fusion.xz ] && unpack .gpu/ddrep-fusion.xz "$BF"
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
# cudarc opens the driver, NVRTC and cuBLAS by name at run time. NVRTC and cuBLAS may live
# only in PyTorch's wheels (nvidia/cu13/lib) or the toolkit's lib64; put every folder that holds
# them on the path. (Not the toolkit's stubs/ folder: its libcuda.so is a stub that would
# shadow the driver.)
for d in $(find /usr/local /opt /usr/lib \( -name 'libnvrtc.so*' -o -name 'libcublas.so*' \) -not -path '*/stubs/*' -printf '%h\n' 2>/dev/null | sort -u); do
    export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$PWD/.gpu/lib"
# ddrep's kernel caches (src/backend.rs configure_gpu_kernels, run by check_device: <cache dir>/cubecl).
CACHE_DIR="${DDREP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ddrep}"
mkdir -p "$CACHE_DIR"
{
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    echo "commit: $(tr '\n' ' ' < .gpu/commit 2>/dev/null || echo unknown)"
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    for t in autotune ptx; do
        [ -f ".gpu/$t.tar.xz" ] && tar -C "$CACHE_DIR" -xJf ".gpu/$t.tar.xz" && echo "unpacked carried .gpu/$t.tar.xz"
    done
} 2>&1 | tee "$OUT/gpu.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/gpu.txt"

# One deadline for the whole script (TOTAL_S, default 480 s, inside the run's timeout_s): each
# step gets at most its own cap and never more than what is left, so that a hang costs one
# step and the files of the steps before it still come back. PACK_S is kept back for packing
# the caches.
TOTAL_S=${TOTAL_S:-480}
PACK_S=${PACK_S:-25}
END=$((SECONDS + TOTAL_S - PACK_S))
# Said up front: a small TOTAL_S leaves the later steps a second each (exit 124 in the summary).
echo "steps: $STEPS; $((TOTAL_S - PACK_S)) s for all of them (TOTAL_S=$TOTAL_S less PACK_S=$PACK_S)" | tee -a "$OUT/gpu.txt"
cap() { local left=$((END - SECONDS)); [ "$left" -lt 1 ] && left=1; [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
# step FILE CAP_S COMMAND...: runs COMMAND with its timeout, appends its output and exit code.
step() {
    local f="$OUT/$1" c=$2; shift 2
    echo "== $(date +%T) ${DDREP_GPU_CONV:+DDREP_GPU_CONV=$DDREP_GPU_CONV }${DDREP_GPU_ATTENTION:+DDREP_GPU_ATTENTION=$DDREP_GPU_ATTENTION }${DDREP_GPU_MATMUL:+DDREP_GPU_MATMUL=$DDREP_GPU_MATMUL }${DDREP_GPU_OPS:+DDREP_GPU_OPS=$DDREP_GPU_OPS }$* (cap $(cap "$c") s)" | tee -a "$f"
    timeout "$(cap "$c")" "$@" >> "$f.tmp" 2>&1
    echo "exit $?" >> "$f.tmp"
    cat "$f.tmp" >> "$f"; cat "$f.tmp"; rm -f "$f.tmp"
}
# profile BINARY: one SD1.5-size f16 eval under cubecl's kernel profiler, its last table
# (name | time | launches | share) appended to profile.txt.
profile() {
    rm -f /tmp/cubecl-profile.log
    DDREP_GPU_PROFILE=/tmp/cubecl-profile.log step profile.txt 150 "$1" bench unet --full-only --device cuda --precision f16 \
        --warmup 2 --evals 1 --full-evals 2 --python /nonexistent
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
}
# DMON=1: the card's utilisation each second (nvidia-smi dmon, timestamped like the step
# headers) into dmon.txt: an SM share well below 100 % while ddrep's evals run means the GPU
# waits for the host to launch kernels.
if [ "${DMON:-0}" = 1 ]; then
    nvidia-smi dmon -s u -o T -d 1 > "$OUT/dmon.txt" 2>&1 &
    DMON_PID=$!
fi
BENCH="bench unet --full-only --device cuda --warmup 2 --evals 20 --full-evals 10 --python python3"

for s in $STEPS; do
    case "$s" in
    bench)
        for p in ${BENCH_PRECISIONS:-f16}; do step bench.txt 120 "$B" $BENCH --precision "$p"; done ;;
    dparity) step parity.txt 90 python3 tools/gpu/diffusers_parity.py --device cuda ;;
    parity)
        for p in f16 f32 bf16; do step parity.txt 60 "$B" parity --device cuda --precision "$p"; done ;;
    convs)
        # cubek-convolution's other implicit-GEMM kernels (burn reaches them only by autotune).
        for conv in implicit-gemm-mma implicit-gemm-async implicit-gemm-async-mma implicit-gemm-tma implicit-gemm-tma-mma; do
            DDREP_GPU_CONV=$conv step variants.txt 60 "$B" ${BENCH/python3/\/nonexistent} --precision f16
        done ;;
    matmuls)
        # cubek-matmul's other routines for the linear layers and the blocked attention.
        for mm in ${MATMULS:-simple-mma multi-rows mma-multi-rows double double-mma ordered-double specialized-tma-mma}; do
            DDREP_GPU_MATMUL=$mm step variants.txt 60 "$B" ${BENCH/python3/\/nonexistent} --precision f16
        done ;;
    kernels)
        for conv in native im2col; do
            DDREP_GPU_CONV=$conv step variants.txt 100 "$B" ${BENCH/python3/\/nonexistent} --precision f16
        done
        DDREP_GPU_ATTENTION=flash step variants.txt 60 "$B" parity --device cuda --precision f16
        DDREP_GPU_ATTENTION=flash step variants.txt 100 "$B" ${BENCH/python3/\/nonexistent} --precision f16 ;;
    sample)
        rm -rf /tmp/ddrep-gpu-sample
        step parity.txt 90 "$B" sample --model sd15 --weights tests/fixtures/sd15_tiny/model --method ddrep --device cuda \
            --precision f16 --prompt "a red bicycle" --cfg 3 --steps 3 --solver-steps 20 --width 32 --depth 1 --embedding 16 \
            --out /tmp/ddrep-gpu-sample
        python3 -c 'import json; r = json.load(open("/tmp/ddrep-gpu-sample/record.json")); print("record:", r["model"], "nfe", r["nfe"], "precision", r["model_config"]["precision"], "seconds", r["seconds"])' >> "$OUT/parity.txt" 2>&1 ;;
    cublas)
        # cuBLAS GEMMs: parity first (a wrong layout shows there), then the ratio to diffusers,
        # then each switch alone (which GEMMs gain), then where the time goes.
        for p in f16 f32 bf16; do
            DDREP_GPU_MATMUL=cublas DDREP_GPU_CONV=cublas step parity.txt 60 "$B" parity --device cuda --precision "$p"
        done
        DDREP_GPU_MATMUL=cublas DDREP_GPU_CONV=cublas step bench.txt 120 "$B" $BENCH --precision f16
        DDREP_GPU_MATMUL=cublas DDREP_GPU_CONV=implicit-gemm step variants.txt 60 "$B" ${BENCH/python3/\/nonexistent} --precision f16
        DDREP_GPU_CONV=cublas DDREP_GPU_MATMUL=auto step variants.txt 60 "$B" ${BENCH/python3/\/nonexistent} --precision f16
        DDREP_GPU_MATMUL=cublas DDREP_GPU_CONV=cublas profile "$B" ;;
    nsys)
        NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems*/bin/nsys /usr/local/cuda*/nsight-systems*/bin/nsys 2>/dev/null | head -1)
        if [ -n "$NSYS" ]; then
            rm -f /tmp/ddrep-nsys.*
            step profile.txt 150 "$NSYS" profile --trace=cuda --sample=none --cpuctxsw=none -o /tmp/ddrep-nsys -f true \
                "$B" bench unet --full-only --device cuda --precision f16 --warmup 2 --evals 1 --full-evals 2 --python /nonexistent
            for r in cuda_gpu_kern_sum cuda_api_sum; do
                timeout "$(cap 60)" "$NSYS" stats --report "$r" --format table /tmp/ddrep-nsys.nsys-rep 2>&1 | cut -c1-220 | head -45 >> "$OUT/profile.txt"
            done
        else
            echo "no nsys on this machine: nsys skipped" | tee -a "$OUT/profile.txt"
        fi ;;
    ops)
        DDREP_GPU_OPS=burn step variants.txt 100 "$B" ${BENCH/python3/\/nonexistent} --precision f16
        DDREP_GPU_OPS=burn profile "$B" ;;
    profile)
        # Each device sync (one per eval) appends the table of kernel times since the last one;
        # the last table is the last full SD1.5 eval.
        profile "$B" ;;
    autotune)
        # The first SD1.5 process autotunes every conv, matmul and reduction shape in its
        # warm-up evals (its progress lines say how long each took).
        if [ -x "$BA" ]; then
            step variants.txt 360 "$BA" $BENCH --precision f16
        else
            echo "no .gpu/ddrep-autotune.xz: autotune skipped" | tee -a "$OUT/variants.txt"
        fi ;;
    fusion)
        # burn's fusion around ddrep's kernel calls: fewer launches (profile: the launch counts).
        if [ -x "$BF" ]; then
            step variants.txt 60 "$BF" parity --device cuda --precision f16
            step variants.txt 120 "$BF" ${BENCH/python3/\/nonexistent} --precision f16
            profile "$BF"
        else
            echo "no .gpu/ddrep-fusion.xz: fusion skipped" | tee -a "$OUT/variants.txt"
        fi ;;
    *) echo "unknown step '$s'" | tee -a "$OUT/gpu.txt" ;;
    esac
done

[ -n "${DMON_PID:-}" ] && kill "$DMON_PID" 2>/dev/null
# One table of every bench and parity step above (tools/gpu/summary.py), at the end of gpu.txt.
{ echo; echo "summary:"; python3 tools/gpu/summary.py "$OUT"; } 2>&1 | tee -a "$OUT/gpu.txt"
# Pack the caches for the next session (see the header). The autotune picks are small and
# save the most (a cached pick compiles one kernel, not every candidate); the PTX comes back
# only while it fits the device tool's 16 MiB per file.
{
    echo "caches in $CACHE_DIR/cubecl:"
    find "$CACHE_DIR/cubecl" -name '*.json.log' -printf '%s bytes, %p\n' 2>/dev/null | head -20
    if [ -d "$CACHE_DIR/cubecl/autotune" ]; then
        tar -C "$CACHE_DIR" --exclude="*.lock" -cJf "$OUT/autotune.tar.xz" cubecl/autotune && echo "packed autotune.tar.xz: $(stat -c %s "$OUT/autotune.tar.xz") bytes"
    fi
    ptx=$(cd "$CACHE_DIR" && ls -d cubecl/ptx-* 2>/dev/null)
    if [ -n "$ptx" ]; then
        tar -C "$CACHE_DIR" --exclude="*.lock" -cf - $ptx | xz -T0 -6 > "$OUT/ptx.tar.xz"
        size=$(stat -c %s "$OUT/ptx.tar.xz")
        if [ "$size" -gt $((16 * 1024 * 1024 - 4096)) ]; then
            rm -f "$OUT/ptx.tar.xz"; echo "ptx cache: $size bytes packed, over 16 MiB: not brought back"
        else
            echo "packed ptx.tar.xz: $size bytes"
        fi
    fi
} 2>&1 | tee -a "$OUT/gpu.txt"
