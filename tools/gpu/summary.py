#!/usr/bin/env python3
"""One table of every SD1.5 bench and parity run in check.sh's output files.

Usage: python3 tools/gpu/summary.py DIR   (DIR: check.sh's $OUT, or a device folder it came
back to). For each step header (`== HH:MM:SS [VAR=value ...] BINARY COMMAND ...`) it prints
the kernel variables, the binary, the command, and what the step's output says: the median
seconds per SD1.5 eval of ddrep and diffusers, the ratio, parity's verdict, refusals, the
exit code.
"""
import re
import sys
from pathlib import Path


def steps(text):
    """(header, body) for each `== ` step header in one output file."""
    parts = re.split(r"^(== .*)$", text, flags=re.M)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def describe(header, body):
    # Headers before 2026-11-26's second call carry no time.
    m = re.match(r"== (?:(\d\d:\d\d:\d\d) )?((?:DDREP_\w+=\S+ )*)(\S+) (\S+)", header)
    if not m:
        return None
    time, env, binary, command = m.groups()
    precision = re.search(r"--precision (\S+)", header)
    if precision:
        command += " " + precision.group(1)
    row = {"time": time or "", "kernels": env.strip() or "defaults", "binary": Path(binary).name, "command": command}
    for framework in ("ddrep", "diffusers"):
        hit = re.search(rf"^\| SD1\.5[^|]*\|[^|]*\|[^|]*\| {framework}[^|]*\| ([0-9.]+) \|", body, flags=re.M)
        # A step stopped by its cap prints no table, but diffusers' progress line comes first.
        progress = re.search(rf"^\s+{framework}: ([0-9.]+) s/eval \(median\)", body, flags=re.M)
        row[framework] = hit.group(1) if hit else progress.group(1) if progress else ""
    ratio = re.search(r"ratio ddrep / diffusers \(median time per eval\) = ([0-9.]+)", body)
    row["ratio"] = ratio.group(1) if ratio else ""
    verdict = re.search(r"^(all \d+ checks within \S+|.*checks? (?:outside|failed).*)$", body, flags=re.M)
    row["parity"] = verdict.group(1) if verdict else ""
    row["refused"] = "yes" if "refused" in body else ""
    code = re.findall(r"^exit (\d+)$", body, flags=re.M)
    row["exit"] = code[-1] if code else "?"
    return row


def main():
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-out")
    rows = []
    for f in sorted(folder.glob("*.txt")):
        for header, body in steps(f.read_text(encoding="utf-8", errors="replace")):
            row = describe(header, body)
            if row:
                rows.append((row["time"], f.name, len(rows), row))
    cols = ["kernels", "binary", "command", "ddrep", "diffusers", "ratio", "parity", "refused", "exit"]
    print("| time | file | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    # In time order where the headers carry it, else in file order.
    for time, name, _, row in sorted(rows, key=lambda r: (r[0], r[2])):
        print(f"| {time} | {name} | " + " | ".join(row[c] for c in cols) + " |")


if __name__ == "__main__":
    main()
