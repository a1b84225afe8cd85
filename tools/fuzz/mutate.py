#!/usr/bin/env python3
"""Mutation probes of ddrep's inputs: change one thing at a time in a valid input, run the
binary, and report every run that panics, dies on a signal (an allocation abort, the OOM
killer), outlives its timeout, or fails with more than one line on stderr.

Not a test (it takes minutes and reads the warm build); run it after changing a loader, the
YAML schema or a limit. Exit status 1 when anything was found.

    python3 tools/fuzz/mutate.py sd15-configs     # each key of each SD1.5 config.json
    python3 tools/fuzz/mutate.py sd15-files       # safetensors headers, truncations, tokenizer files
    python3 tools/fuzz/mutate.py yaml [FILE ...]  # each leaf of experiment files (default: experiments/demo_*.yaml)
    python3 tools/fuzz/mutate.py cli              # `ddrep sample` flags, analytic and SD1.5
    python3 tools/fuzz/mutate.py coco             # COCO caption files

The binary is $DDREP_BIN, else $CARGO_TARGET_DIR/release/ddrep (default target dir
~/.cache/ddrep-target). `yaml` needs PyYAML. For a YAML file whose name contains `table1`,
mutations that pass `run --dry-run` are also run (cfg=[3] seeds=[0]), scored and reported.
"""

import copy
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests/fixtures/sd15_tiny/model")
BIN = os.environ.get("DDREP_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/ddrep-target"), "release/ddrep")

found = []
slow = []
runs = 0


def probe(tag, args, timeout=120, may_be_slow=False):
    """Runs `ddrep ARGS`; records a finding and returns None, or returns the exit code.
    With `may_be_slow` (real grid runs, whose mutated settings may legitimately ask for much
    more work, e.g. a deleted solver.steps falls back to the paper's 200), a timeout is listed
    apart and is not a finding."""
    global runs
    runs += 1
    try:
        p = subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        listed = slow if may_be_slow else found
        listed.append(f"TIMEOUT {tag}: ddrep {' '.join(args)}")
        print(("SLOW " if may_be_slow else "") + listed[-1], flush=True)
        return None
    err = p.stderr.strip()
    lines = [l for l in err.splitlines() if l.strip()]
    # A grid run names each failed cell on its own line, then ends with one `error:` line.
    one_line = len(lines) == 1 or (args[0] == "run" and lines and lines[-1].startswith("error: "))
    why = None
    if p.returncode == 101 or "panicked" in err:
        why = "PANIC"
    elif p.returncode < 0:
        why = f"SIGNAL {-p.returncode}"
    elif p.returncode != 0 and not one_line:
        why = "NOT ONE LINE"
    if why:
        found.append(f"{why} {tag}: ddrep {args[0]} -> {p.returncode}: {err[:300]!r}")
        print(found[-1], flush=True)
        return None
    return p.returncode


def tiny_copy(work):
    model = os.path.join(work, "m")
    shutil.copytree(TINY, model)
    return model


def sample_sd15(model, work, prompt="a cat"):
    return ["sample", "--model", "sd15", "--weights", model, "--method", "reference", "--prompt", prompt,
            "--steps", "2", "--latent-size", "8,8", "--out", os.path.join(work, "out")]


def sd15_configs():
    work = tempfile.mkdtemp()
    model = tiny_copy(work)
    files = ["unet/config.json", "text_encoder/config.json", "vae/config.json", "scheduler/scheduler_config.json",
             "model_index.json", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"]
    whole = [0, -1, 3, 10**6, 10**12, 2**63, 1.5, 1e-30, 1e308, "abc", None, [], [0], {}, True]
    for f in files:
        orig = json.load(open(os.path.join(TINY, f)))
        for k, v0 in orig.items():
            # (list index or None for the whole value, new value)
            values = [(None, v) for v in whole]
            if isinstance(v0, list):
                values += [(i, v) for i in range(len(v0)) for v in [0, -1, 7, 10**6, 10**12, "x", None]]
                values += [(None, v0 + v0[-1:])]
            for i, v in values:
                m = copy.deepcopy(orig)
                if i is None:
                    m[k] = v
                else:
                    m[k][i] = v
                json.dump(m, open(os.path.join(model, f), "w"))
                probe(f"{f} {k}{'' if i is None else f'[{i}]'}={v!r}", sample_sd15(model, work))
        json.dump(orig, open(os.path.join(model, f), "w"))
    shutil.rmtree(work, ignore_errors=True)


def sd15_files():
    work = tempfile.mkdtemp()
    model = tiny_copy(work)
    rng = random.Random(7)
    args = sample_sd15(model, work, "a cat, \U0001F431 naïve")
    for w in ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
              "vae/diffusion_pytorch_model.safetensors"]:
        orig = open(os.path.join(TINY, w), "rb").read()
        hl = struct.unpack("<Q", orig[:8])[0]
        header = json.loads(orig[8:8 + hl])
        path = os.path.join(model, w)
        for _ in range(60):
            b = bytearray(orig)
            j = rng.randrange(0, 8 + hl)
            b[j] = rng.randrange(256)
            open(path, "wb").write(b)
            probe(f"{w} byte {j} changed", args)
        for cut in [0, 4, 8, 9, 8 + hl // 2, 8 + hl, 8 + hl + 1, len(orig) - 1]:
            open(path, "wb").write(orig[:cut])
            probe(f"{w} cut at {cut}", args)
        keys = [k for k in header if k != "__metadata__"]
        for _ in range(40):
            h = copy.deepcopy(header)
            k = rng.choice(keys)
            e = h[k]
            what = rng.choice(["dtype", "shape", "offsets", "shape0", "metadata"])
            if what == "dtype":
                e["dtype"] = rng.choice(["I64", "U8", "BOOL", "F8_E4M3", "XYZ", 3])
            elif what == "shape":
                e["shape"] = rng.choice([[], [0], [10**12], [-1], ["a"], e["shape"] + [1]])
            elif what == "offsets":
                e["data_offsets"] = rng.choice([[0, 0], [10**15, 10**15 + 4], [5, 3],
                                                [e["data_offsets"][0], e["data_offsets"][1] + 2]])
            elif what == "shape0":
                e["shape"] = [0] + e["shape"][1:]
            else:
                h["__metadata__"] = {"x": 3}
            hb = json.dumps(h).encode()
            hb += b" " * ((8 - len(hb) % 8) % 8)
            open(path, "wb").write(struct.pack("<Q", len(hb)) + hb + orig[8 + hl:])
            probe(f"{w} {k} {what}", args)
        open(path, "wb").write(orig)
    for f, texts in [
        ("tokenizer/vocab.json", ["{}", "[]", '{"a": "b"}', '{"a</w>": -1}', '{"a</w>": 1e30}', "null"]),
        ("tokenizer/merges.txt", ["", "a", "a b c d\n", "#version: 0.2\n\u00ff \u00fe\n", "\x00\x01\n" * 10]),
        ("tokenizer/tokenizer_config.json", ["{}", "[]", '{"model_max_length": 0}', '{"model_max_length": 2}',
                                             '{"bos_token": 3}', '{"eos_token": {"content": 5}}', '{"unk_token": null}']),
        ("tokenizer/special_tokens_map.json", ["{}", "[]", '{"pad_token": "zzz"}', '{"bos_token": 1}']),
    ]:
        p = os.path.join(model, f)
        orig = open(p, "rb").read()
        for t in texts:
            open(p, "w").write(t)
            probe(f"{f} = {t[:40]!r}", args)
        open(p, "wb").write(orig + b"\xff\xfe")
        probe(f"{f} + invalid UTF-8", args)
        open(p, "wb").write(orig)
    shutil.rmtree(work, ignore_errors=True)


def yaml_files(files):
    import yaml  # PyYAML

    values = [0, -1, 10**12, 1e308, float("nan"), float("inf"), "x", None, [], {}, True, "0..0", "5..2", [[1]], "ééé"]

    def leaves(x, path=()):
        if isinstance(x, dict):
            for k, v in x.items():
                yield from leaves(v, path + (k,))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                yield from leaves(v, path + (i,))
        if path:
            yield path

    def parent(d, path):
        for p in path[:-1]:
            d = d[p]
        return d

    for f in files:
        base = yaml.safe_load(open(f))
        work = tempfile.mkdtemp()
        for path in list(leaves(base)):
            for v in values + [KeyError]:
                d = copy.deepcopy(base)
                d.setdefault("outputs", {})["dir"] = os.path.join(work, "results")
                if v is KeyError:
                    del parent(d, path)[path[-1]]
                else:
                    parent(d, path)[path[-1]] = v
                y = os.path.join(work, "grid.yaml")
                open(y, "w").write(yaml.safe_dump(d, allow_unicode=True))
                tag = f"{os.path.basename(f)} {'.'.join(map(str, path))} {'deleted' if v is KeyError else repr(v)}"
                rc = probe(tag, ["run", y, "--dry-run"], 60)
                probe(tag, ["status", y], 60)
                if rc == 0 and "table1" in os.path.basename(f):
                    probe(tag, ["run", y, "cfg=[3]", "seeds=[0]"], 300, may_be_slow=True)
                    probe(tag, ["score", y], 60)
                    probe(tag, ["report", y], 60)
        shutil.rmtree(work, ignore_errors=True)


def cli():
    base = ["sample", "--prompt", "a cat", "--steps", "3", "--solver-steps", "2", "--iters", "3",
            "--width", "8", "--embedding", "8", "--depth", "1"]
    flags = {
        "--analytic-shape": ["0,0,0", "3,0,8", "1,1,1", "3,8", "3,8,8,8", "x", "64,64,64", "3,100000,100000", "-1,8,8"],
        "--captions": ["", ",", "a,a", "a" * 5000],
        "--latent-size": ["0,0", "7,7", "8", "8,8,8", "100000,100000", "x,y"],
        "--cfg": ["nan", "-5", "1e308", "0"],
        "--cfg-convention": ["x", "literal"],
        "--seed": ["18446744073709551615", "-1"],
        "--num-samples": ["0", "3", "100000"],
        "--steps": ["0", "1", "100001"],
        "--eta": ["-0.1", "1.1", "nan", "0"],
        "--lr": ["0", "-1", "nan", "1e308"],
        "--solver-steps": ["0", "1000000000000"],
        "--iters": ["0", "1000000000000"],
        "--repaint": ["0,0", "1,0", "0,1", "5,5", "1,2,3", "1000000,1000000", "x"],
        "--width": ["0", "100000"], "--depth": ["0", "1000"], "--embedding": ["0", "1", "3"],
        "--diffrep": ["panorama", "x"],
        "--device": ["cuda", "x"],
        "--precision": ["f16", "x"],
    }
    work = tempfile.mkdtemp()
    for model in (["--model", "analytic"], ["--model", "sd15", "--weights", TINY, "--latent-size", "8,8"]):
        for flag, vs in flags.items():
            for v in vs:
                for method in ("ddrep", "sjc", "sds"):
                    out = os.path.join(work, "out")
                    probe(f"{model[1]} {method} {flag} {v[:40]!r}",
                          base + model + ["--method", method, flag, v, "--out", out], 60)
                    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def coco():
    work = tempfile.mkdtemp()
    base = {"images": [{"id": 1}, {"id": 2}],
            "annotations": [{"id": 10, "image_id": 1, "caption": "a cat on a mat"},
                            {"id": 11, "image_id": 2, "caption": "a dog"},
                            {"id": 12, "image_id": 1, "caption": "another cat"}]}
    grid = ("name: c\nmodel: {{name: analytic, shape: [3, 8, 8]}}\n"
            "diffrep: {{diffrep: siren, resolution: [8, 8], out_channels: 3, embedding_size: 16, width: 16, depth: 1}}\n"
            "cfg: [3]\ncaptions: {{coco: {{path: {p}, select: {sel}, first: {first}}}}}\n"
            "methods:\n  - method: reference\nseeds: [0]\noutputs: {{dir: {o}}}\n")
    files = []
    for k in ["annotations", "images"]:
        for v in [None, {}, "x", 3, [], [None], [[]], [{}]]:
            d = copy.deepcopy(base)
            d[k] = v
            files.append((f"{k} = {v!r}", json.dumps(d).encode()))
    for field in ["id", "image_id", "caption"]:
        for v in [None, "x", -1, 2**70, 1.5, [], "", " ", "a" * 100000]:
            d = copy.deepcopy(base)
            d["annotations"][0][field] = v
            files.append((f"annotations[0].{field} = {str(v)[:20]!r}", json.dumps(d).encode()))
        d = copy.deepcopy(base)
        del d["annotations"][0][field]
        files.append((f"annotations[0].{field} deleted", json.dumps(d).encode()))
    files += [(f"raw {raw[:20]!r}", raw) for raw in [b"", b"\xff\xfe", b"[]", b"null", b"{", b'{"annotations": [' * 10000]]
    p, y = os.path.join(work, "captions.json"), os.path.join(work, "grid.yaml")
    for tag, raw in files:
        open(p, "wb").write(raw)
        for sel in ["by_annotation_id", "by_image_id"]:
            for first in [1, 3, 100]:
                open(y, "w").write(grid.format(p=p, sel=sel, first=first, o=os.path.join(work, "results")))
                probe(f"{tag} ({sel}, first {first})", ["run", y, "--dry-run"], 60)
    shutil.rmtree(work, ignore_errors=True)


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("sd15-configs", "sd15-files", "yaml", "cli", "coco"):
        sys.exit(__doc__)
    if not os.access(BIN, os.X_OK):
        sys.exit(f"no ddrep binary at {BIN}: cargo build --release first, or set DDREP_BIN")
    target = sys.argv[1]
    if target == "sd15-configs":
        sd15_configs()
    elif target == "sd15-files":
        sd15_files()
    elif target == "yaml":
        import glob
        yaml_files(sys.argv[2:] or sorted(glob.glob(os.path.join(ROOT, "experiments/demo_*.yaml"))))
    elif target == "cli":
        cli()
    else:
        coco()
    print(f"{target}: {runs} runs, {len(found)} finding(s)" + (f", {len(slow)} slow grid run(s) stopped (listed as SLOW above)" if slow else ""))
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
