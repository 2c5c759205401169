"""Time the yardstick (every block removed alone, held-out NLL per window) on the embedded models.

For each model and granularity it runs :func:`companion.experiments.yardstick.measure` on held-out
WikiText-2 test windows (one per document) and prints the wall time, the passes and the decoder
layers run (``layer_passes``; a full pass of an L-layer model counts L). ``--naive`` also times
the straightforward evaluation (a full forward of the pruned model per block, nothing reused) on
the same windows and checks that both give the same NLLs. Time is linear in the number of windows,
so a run with fewer ``--samples`` extrapolates to the yardstick's 16 (``scaled_to``). The last line
is ``total_seconds=<s> scaled_to_<n>_windows=<s>``.

    python benchmarks/yardstick.py                                   # both models, all granularities
    python benchmarks/yardstick.py --models smollm2-135m --granularities layer --samples 4 --naive
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from companion.experiments.yardstick import HELDOUT, heldout_windows, measure
from companion.method.calibration import load_documents
from companion.model.layouts import decoder_layers
from companion.model.loading import load_model
from companion.model.surgery import Pruning, temporarily_pruned
from companion.names import GRANULARITIES

TARGET_WINDOWS = 16


def naive_nll(model, input_ids: torch.Tensor, granularity: str, blocks: list[int], batch_size: int) -> torch.Tensor:
    """Per-window summed NLL with each block removed, by a full forward of the pruned model each time."""
    out = []
    with torch.inference_mode():
        for block in blocks:
            with temporarily_pruned(model, Pruning(granularity, [block])):
                row = []
                for lo in range(0, len(input_ids), batch_size):
                    ids = input_ids[lo:lo + batch_size]
                    logits = model(input_ids=ids, use_cache=False).logits
                    row += [F.cross_entropy(logits[i, :-1].float(), ids[i, 1:], reduction="sum") for i in range(len(ids))]
            out.append(torch.stack(row))
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gemma-3-270m,smollm2-135m")
    parser.add_argument("--granularities", default=",".join(GRANULARITIES))
    parser.add_argument("--samples", type=int, default=TARGET_WINDOWS, help="held-out windows (one per document)")
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch-size", type=int, help="windows per forward pass (default: by the logits' size)")
    parser.add_argument("--naive", action="store_true", help="also time the full-forward evaluation and compare")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    total = 0.0
    documents = load_documents(*HELDOUT)
    for spec in args.models.split(","):
        loaded = load_model(spec, device="cpu", dtype="float32")
        windows = heldout_windows(loaded.tokenizer, documents, args.samples, args.seqlen)
        layers = len(decoder_layers(loaded.model))
        print(f"model={spec} layers={layers} windows={args.samples}x{args.seqlen} documents={windows.doc_index} "
              f"threads={torch.get_num_threads()}")
        for granularity in args.granularities.split(","):
            start = time.perf_counter()
            result = measure(loaded.model, windows, spec, [granularity], batch_size=args.batch_size,
                             documents=documents)
            seconds = time.perf_counter() - start
            total += seconds
            cost = result.cost[granularity]
            line = (f"  {granularity}: {seconds:.1f}s passes={cost.passes} layer_passes={cost.layer_passes} "
                    f"(no reuse: {cost.passes * layers}) largest delta_nll={result.table['delta_nll'].max():.3f}")
            if args.naive:
                from companion.method.removal import default_batch_size

                batch = args.batch_size or default_batch_size(loaded.model, args.seqlen)
                start = time.perf_counter()
                naive = naive_nll(loaded.model, windows.input_ids, granularity, list(range(layers)), batch)
                naive_seconds = time.perf_counter() - start
                mine = torch.tensor(result.windows[result.windows["block"] >= 0]["nll"].to_numpy()).view(layers, -1)
                diff = (mine - naive.double()).abs().max().item()
                line += f" naive={naive_seconds:.1f}s ratio={naive_seconds / seconds:.2f} max_abs_nll_diff={diff:.2e}"
            print(line, flush=True)
    print(f"total_seconds={total:.1f} scaled_to_{TARGET_WINDOWS}_windows={total * TARGET_WINDOWS / args.samples:.1f}")


if __name__ == "__main__":
    main()
