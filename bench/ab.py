#!/usr/bin/env python3
"""Compares two builds of our own benchmark (`cargo build --release --example bench` at two commits) on the
same checkpoint, interleaved: A B A B … for a number of rounds, each run in its own process, and prints each
phase's median and range per side and the median of the per-round ratios B/A. This is how a change is shown
not to slow the UNet step down on a shared, noisy machine (see bench/README.md).

    bench/ab.py --a OLD/bench --b NEW/bench --model bench/.cache/sd15-arch [--rounds 5] [--only unet256,t2i]
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile


def run(binary, model, only, threads, out):
    subprocess.run([binary, "measure", "--model", model, "--quick", "--threads", str(threads), "--only", only,
                    "--json", out], check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="the baseline's bench binary")
    ap.add_argument("--b", required=True, help="the candidate's bench binary")
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="unet256,t2i")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    rows = {"a": [], "b": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for side in ("a", "b"):
                res = run(getattr(args, side), args.model, args.only, args.threads, os.path.join(tmp, f"{side}.json"))
                rows[side].append(res)
            print(f"round {r + 1}/{args.rounds}: load {open('/proc/loadavg').read().split()[0]}", flush=True)
    # Wall-clock phases: `<phase>_s` (and `first_<phase>_s`, the call that reads the deferred weights).
    keys = [k for k in rows["a"][0] if k.endswith("_s") and not k.endswith("_cpu_s")]
    print(f"{'phase':<22} {'A median (range) s':>26} {'B median (range) s':>26} {'B/A per round: median (range)':>34}")
    for k in keys:
        a = [x[k] for x in rows["a"]]
        b = [x[k] for x in rows["b"]]
        ratios = [y / x for x, y in zip(a, b)]
        fmt = lambda v: f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"
        print(f"{k:<22} {fmt(a):>26} {fmt(b):>26} {fmt(ratios):>34}")


if __name__ == "__main__":
    main()
