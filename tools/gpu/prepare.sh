#!/usr/bin/env bash
# Prepares a GPU check (run HERE, on the build machine, from the repository root):
#   1. builds `ddrep` with --features cuda (burn-cubecl's fixed kernels; .gpu/ddrep.xz) and
#      --features cuda-fusion (.gpu/ddrep-fusion.xz; not with FUSION=0), with AUTOTUNE=1 also
#      --features cuda-autotune (.gpu/ddrep-autotune.xz), in their own target dir (so the CPU
#      build stays warm; the cuda features change features of dependencies shared with polars);
#   2. with GPU_CACHES=DIR, copies the kernel caches a previous check.sh brought back
#      (DIR/autotune.tar.xz, DIR/ptx.tar.xz, e.g. DIR=/work/.device/N) into .gpu/, so the next
#      run starts with the autotune picks and compiled kernels of the last one;
#   3. downloads the diffusers wheel (and the one dependency the GPU image lacks) into .whl/
#      for the PyTorch reference of `ddrep bench unet` there.
# Both folders are ignored through .git/info/exclude. Then run tools/gpu/check.sh on the GPU
# machine with `carry: [".gpu", ".whl"]` (see tools/bench/README.md, "On the GPU machine").
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
for d in /.gpu/ /.whl/; do
    grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done

export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-$HOME/.cache/ddrep-target-cuda}
# Without nvcc here, cudarc's build script falls back to the newest CUDA it knows (13.1) and
# then panics at start-up on a driver that lacks a 13.1-only symbol. The lent machines run
# driver 580 (CUDA 13.0) with PyTorch cu130's NVRTC 13.0, so pin the API to 13.0.
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
mkdir -p .gpu
rm -f .gpu/ddrep .gpu/ddrep*.xz
features="cuda"
[ "${AUTOTUNE:-0}" = 1 ] && features="cuda-autotune $features"
[ "${FUSION:-1}" = 1 ] && features="cuda-fusion $features"
for feature in $features; do
    cargo build --release --features "$feature" --bin ddrep
    # Stripped it is ~50 MB, which with the tree and the wheels is near the 64 MiB that
    # travels; xz brings it to ~10 MB (check.sh unpacks it there with Python's lzma).
    case "$feature" in cuda) name=ddrep ;; *) name=ddrep-${feature#cuda-} ;; esac
    strip -o .gpu/ddrep.bin "$CARGO_TARGET_DIR/release/ddrep"
    xz -T0 -6 -c .gpu/ddrep.bin > ".gpu/$name.xz"
    rm .gpu/ddrep.bin
done
if [ -n "${GPU_CACHES:-}" ]; then
    for t in autotune ptx; do
        if [ -f "$GPU_CACHES/$t.tar.xz" ]; then cp "$GPU_CACHES/$t.tar.xz" .gpu/ && echo "carrying $GPU_CACHES/$t.tar.xz"; fi
    done
fi
# The plots' font rendering links fontconfig and freetype, which the GPU image lacks: carry the
# shared libraries the binary needs beyond glibc and libgcc (check.sh puts .gpu/lib last on
# LD_LIBRARY_PATH, so the machine's own copies win where it has them).
rm -rf .gpu/lib && mkdir -p .gpu/lib
ldd "$CARGO_TARGET_DIR/release/ddrep" | awk '$3 ~ /^\// {print $3}' \
    | grep -v -E '/(libc|libm|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' \
    | xargs -r -I{} cp -L {} .gpu/lib/
ls .gpu/lib
git rev-parse HEAD > .gpu/commit
git status --porcelain --untracked-files=no | grep -q . && echo "dirty" >> .gpu/commit
echo "built $(cd .gpu && ls ddrep*.xz | tr '\n' ' ')($(du -ch .gpu/ddrep*.xz | tail -1 | cut -f1)) from $(head -1 .gpu/commit)"

PY=${PYTHON:-python3}
mkdir -p .whl
# Python 3.12 on the GPU image; diffusers is pure Python. importlib_metadata is the one
# requirement of diffusers 0.42.1 that the image (2026-11 package list) does not hold.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d .whl diffusers==0.42.1 importlib_metadata==8.7.0
ls -la .whl
du -sh .gpu .whl
