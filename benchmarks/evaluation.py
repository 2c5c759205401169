"""Time stock lm-eval ``HFLM`` against ``FastHFLM`` on real lm-eval tasks, and check they agree.

Both wrap the same in-memory model (loaded in float32), by default at the same batch size. Each task is built
by lm-eval exactly as ``companion eval`` builds it (stock task online, the offline configs over
``$COMPANION_DATA_DIR`` otherwise); its log-likelihood requests for the first ``--limit`` documents
are scored by both models, alternating, ``--repeats`` times. Prints per task the best wall time of
each (on a shared machine one run mostly measures the neighbours), the speedup, both models'
metrics (lm-eval's own ``process_results``) and the largest per-request log-likelihood difference;
then the same over all tasks together. Beside each measured speedup it prints the FLOP-ideal one
(:func:`flop_ideal`): what the speedup would be if time followed the matrix-multiply work of the
positions each model runs, so that the measured/ideal share shows where per-request overhead (not
arithmetic) is left. The last line is ``speedup=<x> flop_ideal=<y> max_abs_loglik_diff=<z>``, the
speedup being total stock time over total fast time, the ideal total stock FLOPs over total fast FLOPs.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np
from lm_eval.api.instance import Instance
from lm_eval.tasks import get_task_dict

from companion.experiments import EVAL_BATCH_SIZE
from companion.experiments.evaluation import task_manager_for
from companion.experiments.fastlm import FastHFLM, make_lm
from companion.hub import hub_reachable
from companion.model.layouts import decoder_layers
from companion.model.loading import DEFAULT_MODEL, load_model
from companion.pipeline.config import PROFILES


def task_requests(task_name: str, limit: int):
    """lm-eval's task object and its log-likelihood instances for the first ``limit`` documents."""
    task = get_task_dict([task_name], task_manager_for(task_name, hub_reachable()))[task_name]
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    instances = [inst for inst in task.instances if inst.request_type == "loglikelihood"]
    if len(instances) != len(task.instances):
        raise SystemExit(f"{task_name}: only log-likelihood (multiple-choice) tasks are timed here")
    return task, instances


def metrics(task, instances: list[Instance], results: list[tuple[float, bool]]) -> dict[str, float]:
    """The task's metrics from lm-eval's ``process_results``, averaged over documents."""
    per_doc = collections.defaultdict(list)
    for inst, result in zip(instances, results, strict=True):
        per_doc[inst.doc_id].append((inst.idx, inst.doc, result))
    values = collections.defaultdict(list)
    for entries in per_doc.values():
        entries.sort(key=lambda entry: entry[0])
        for name, value in task.process_results(entries[0][1], [result for _, _, result in entries]).items():
            values[name].append(value)
    return {name: float(np.mean(vals)) for name, vals in values.items()}


def positions(lm: FastHFLM, instances: list[Instance]) -> tuple[int, int, int]:
    """(input positions of stock, backbone positions of fast, LM-head positions of fast), padding excluded.

    Stock runs backbone and head at every input position of every request. Fast runs the
    backbone once per shared prefix plus each request's rest, and the head only at the positions
    that predict continuation tokens.
    """
    requests = [(None, *lm._encode_pair(*inst.args)) for inst in instances]
    stock = sum(min(len(ctx) + len(cont) - 1, lm.max_length) for _, ctx, cont in requests)
    backbone = head = 0
    for group in lm._groups(requests):
        backbone += len(group.prefix) + sum(len(ctx) - len(group.prefix) + len(cont) - 1
                                            for ctx, cont in zip(group.contexts, group.continuations))
        head += sum(map(len, group.continuations))
    return stock, backbone, head


def flops_per_position(model) -> tuple[int, int]:
    """Multiply-accumulate FLOPs (2 per weight) per position of the decoder layers and of the LM head.

    Attention's score and value products (quadratic in length) are left out: these requests are
    short (tens of tokens), where they are a few percent of a layer's weight products.
    """
    backbone = 2 * sum(p.numel() for layer in decoder_layers(model) for p in layer.parameters() if p.ndim > 1)
    return backbone, 2 * model.get_output_embeddings().weight.numel()


def flop_ideal(stock: int, backbone: int, head: int, per_position: tuple[int, int]) -> tuple[float, float]:
    """(stock FLOPs, fast FLOPs) from :func:`positions`: stock runs backbone and head at every
    position, fast the backbone at ``backbone`` positions and the head at ``head``."""
    layer_flops, head_flops = per_position
    return stock * (layer_flops + head_flops), backbone * layer_flops + head * head_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model spec for companion.model.loading.load_model")
    parser.add_argument("--tasks", default=",".join(t for t in PROFILES["default"].tasks if t != "wikitext2_ppl"),
                        help="comma-separated multiple-choice lm-eval tasks (default: the default profile's)")
    parser.add_argument("--limit", type=int, default=50, help="first N documents of each task")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help="lm-eval batch size (default: companion's, %(default)s)")
    parser.add_argument("--stock-batch-size", type=int,
                        help="stock HFLM's batch size, to compare against stock at its own best (default: --batch-size)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed runs of each, alternating stock and fast; the best wall time of each counts")
    args = parser.parse_args()

    loaded = load_model(args.model, device=args.device, dtype="float32")
    batch_sizes = {"stock": args.stock_batch_size or args.batch_size, "fast": args.batch_size}
    lms = {name: make_lm(loaded.model, loaded.tokenizer, batch_size=batch_sizes[name], fast=name == "fast")
           for name in ("stock", "fast")}
    print(f"model={args.model} device={loaded.device} limit={args.limit} batch_size stock={batch_sizes['stock']} "
          f"fast={batch_sizes['fast']} repeats={args.repeats}")
    best = {"stock": 0.0, "fast": 0.0}
    work = {"stock": 0.0, "fast": 0.0}
    per_position = flops_per_position(loaded.model)
    max_diff = 0.0
    for task_name in args.tasks.split(","):
        task, instances = task_requests(task_name, args.limit)
        for lm in lms.values():
            lm.loglikelihood(instances[: lm.batch_size], disable_tqdm=True)  # warm-up
        seconds = {name: [] for name in lms}
        results = {}
        for _ in range(args.repeats):
            for name, lm in lms.items():
                start = time.perf_counter()
                results[name] = lm.loglikelihood(instances, disable_tqdm=True)
                seconds[name].append(time.perf_counter() - start)
        diff = max(abs(s[0] - f[0]) for s, f in zip(results["stock"], results["fast"], strict=True))
        greedy_same = sum(s[1] == f[1] for s, f in zip(results["stock"], results["fast"], strict=True))
        stock_pos, backbone_pos, head_pos = positions(lms["fast"], instances)
        stock_flops, fast_flops = flop_ideal(stock_pos, backbone_pos, head_pos, per_position)
        work["stock"] += stock_flops
        work["fast"] += fast_flops
        print(f"{task_name}: documents={len({inst.doc_id for inst in instances})} requests={len(instances)} "
              f"positions stock={stock_pos} fast backbone={backbone_pos} head={head_pos}")
        for name in lms:
            print(f"  {name:5s} walls={','.join(f'{s:.2f}' for s in seconds[name])}s best={min(seconds[name]):.2f}s "
                  + " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics(task, instances, results[name]).items())))
            best[name] += min(seconds[name])
        speedup, ideal = min(seconds["stock"]) / min(seconds["fast"]), stock_flops / fast_flops
        print(f"  speedup={speedup:.2f} flop_ideal={ideal:.2f} share_of_ideal={speedup / ideal:.2f} "
              f"max_abs_loglik_diff={diff:.2e} is_greedy identical {greedy_same}/{len(instances)}")
        max_diff = max(max_diff, diff)
    print(f"all tasks: stock {best['stock']:.2f}s fast {best['fast']:.2f}s")
    print(f"speedup={best['stock'] / best['fast']:.2f} flop_ideal={work['stock'] / work['fast']:.2f} "
          f"max_abs_loglik_diff={max_diff:.2e}")


if __name__ == "__main__":
    main()
