# Recipes for ddrep. Install just with `pip install rust-just` or `cargo install just --locked`.
set shell := ["bash", "-euo", "pipefail", "-c"]

export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", env_var("HOME") + "/.cache/ddrep-target")

# The main job on the embedded analytic prior (CPU, minutes).
demo:
    cargo run --release -- demo

# The test suite (what CI runs).
test:
    cargo test --release

# Adam steps/s of 8 paper-size SIRENs, beside PyTorch when torch is installed.
bench:
    cargo run --release -- bench siren

# Build the CUDA backend (works offline, needs no GPU to build).
build-cuda:
    cargo build --release --features cuda

# Regenerate the parity fixtures (needs the pinned Python packages of each tools/fixtures/*/requirements.txt).
fixtures:
    python3 tools/fixtures/ddim/make_ddim_fixtures.py
    python3 tools/fixtures/sd15_tiny/make_fixtures.py
    python3 tools/fixtures/metrics/make_fixtures.py

# The Slurm job array on a real throwaway one-node Slurm (root; installs slurm-wlm and munge
# with apt-get if missing): `just slurm-check`, or with grid overrides `just slurm-check 'cfg=[3]'`.
slurm-check *OVERRIDES:
    [ -x "$CARGO_TARGET_DIR/release/ddrep" ] || cargo build --release
    DDREP_BIN="${DDREP_BIN:-$CARGO_TARGET_DIR/release/ddrep}" bash tools/slurm_check.sh {{OVERRIDES}}

# Run (or resume) an experiment grid, e.g. `just run experiments/demo_table1.yaml cfg=[3]`.
run FILE *OVERRIDES:
    cargo run --release -- run {{FILE}} {{OVERRIDES}}

# Done / pending / failed cells of an experiment (`just status FILE --verify` also checks the
# stored files against their recorded sha256).
status FILE *ARGS:
    cargo run --release -- status {{FILE}} {{ARGS}}

# Paper names -> experiment files (anything else is a file name under experiments/).
experiment NAME:
    #!/usr/bin/env bash
    case "{{NAME}}" in
        panorama|repaint-ablation) echo panorama_repaint ;;
        demo-panorama|demo-repaint-ablation) echo demo_panorama_repaint ;;
        demo-nerf) echo demo_nerf ;;
        demo-fig4) echo demo_fig4 ;;
        fig4) echo fig4_diversity ;;
        *) echo "{{NAME}}" ;;
    esac

# Run an experiment grid, score it against its reference cells, and write its report (Table 1
# as CSV/Markdown/LaTeX, plots, image grids, index.html under results/NAME/report/):
# `just reproduce demo_table1`; `just reproduce table1` needs DDREP_SD15 and DDREP_COCO_CAPTIONS.
# Paper names (`just experiment NAME`): panorama, repaint-ablation, nerf, fig4 (SD1.5, cuda);
# grids without reference cells (panorama, nerf) are run and reported, not scored (their report:
# multiview consistency table and plot, panorama / turntable strips).
reproduce NAME *OVERRIDES:
    #!/usr/bin/env bash
    set -euo pipefail
    f=experiments/$({{just_executable()}} -f {{justfile()}} experiment {{NAME}}).yaml
    cargo run --release -- run "$f" {{OVERRIDES}}
    if grep -q "method: reference" "$f"; then
        cargo run --release -- score "$f" {{OVERRIDES}}
    fi
    cargo run --release -- report "$f" {{OVERRIDES}}

# Checks (Rust, then headless Chromium, tools/gallery_check.sh) that a report's index.html has
# no broken link or image and saves <report>/gallery.png; OUTDIR is outputs.dir if not results.
gallery-check NAME OUTDIR="results":
    cargo run --release -- report experiments/{{NAME}}.yaml --check outputs.dir={{OUTDIR}}
    tools/gallery_check.sh {{OUTDIR}}/{{NAME}}/report
