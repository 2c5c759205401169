"""Throughput of a randomly initialised 8B-shaped Llama, dense and with attention/whole layers dropped.

Speed does not depend on the weights' values, so a GPU without Hub access can still measure the
paper's setting (Llama-3.1-8B shape, bf16): prefill and decode tokens/s and peak memory against the
number of dropped blocks, beside the FLOP-proportional expectation. The drop order comes from a short
scoring pass on random tokens (any order of equal-shaped layers costs the same).

    python benchmarks/gpu_speed.py --out results/gpu/speed_llama-3.1-8b-shape.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
from scoring import SHAPES, random_loaded

from companion.experiments.speed import machine, speed_key, speed_sweep, write_speed
from companion.method.calibration import Documents, Windows
from companion.method.scoring import ScoreSettings, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--drops", default="0,4,8,12,16")
    parser.add_argument("--granularity", default="attn,layer")
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="results/gpu/speed.json")
    args = parser.parse_args()
    loaded = random_loaded(args.shape, args.device, args.dtype)
    ids = torch.randint(0, loaded.model.config.vocab_size, (8, 256), generator=torch.Generator().manual_seed(0))
    docs = Documents([], "random-tokens", "none", "random", "", "")
    scores = score(loaded, docs, Windows(ids, [0] * 8, [0] * 8), ScoreSettings(estimators=["knn"]), progress=False)
    measure = {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batch_size": args.batch_size,
               "warmup": 2, "repeats": args.repeats}
    rows = []
    for granularity in args.granularity.split(","):
        rows += speed_sweep(loaded, scores, "knn", granularity, [int(k) for k in args.drops.split(",")],
                            "none", **measure)
    for row in rows:
        peak = row["peak_memory_bytes"]
        print(f"{row['granularity']:>5} K={row['K']:<3} prefill {row['prefill_tps']:9.0f} tok/s "
              f"x{row['measured_speedup_prefill']:.3f} (FLOPs x{row['expected_speedup_prefill']:.3f})  "
              f"decode {row['decode_tps']:7.1f} tok/s x{row['measured_speedup_decode']:.3f} "
              f"(FLOPs x{row['expected_speedup_decode']:.3f})"
              + (f"  peak {peak / 2**30:.1f} GiB" if peak else ""))
    settings = {"command": shlex.join(["python", "benchmarks/gpu_speed.py", *sys.argv[1:]]),
                "model": f"random:{args.shape}", "dtype": str(loaded.dtype), "device": machine(loaded.device),
                **measure}
    write_speed(rows, Path(args.out), settings, speed_key(loaded.identity(), scores, settings))


if __name__ == "__main__":
    main()
