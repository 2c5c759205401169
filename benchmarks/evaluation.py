"""Time stock lm-eval ``HFLM`` against ``FastHFLM`` on PIQA log-likelihood requests.

Both wrap the same in-memory model (loaded in float32) at the same batch size and score the same
requests, built as lm-eval's ``piqa`` task builds them (context ``"Question: {goal}\\nAnswer:"``,
continuations ``" {sol1}"`` and ``" {sol2}"``) from the local ``$COMPANION_DATA_DIR/piqa`` files.
Prints the wall time of each run (stock and fast alternate) and the best of each, which the
speedup compares (on a shared machine one run mostly measures the neighbours), the largest
per-request log-likelihood difference and both models' acc and acc_norm. The last line is
``speedup=<x> max_abs_loglik_diff=<y>``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from companion.fastlm import make_lm
from companion.models import DEFAULT_MODEL, load_model
from companion.paths import data_file


def piqa_docs(limit: int) -> list[dict]:
    """The first ``limit`` PIQA validation examples, each with its gold ``label``."""
    with open(data_file("piqa/valid.jsonl", "PIQA validation"), encoding="utf-8") as handle:
        docs = [json.loads(line) for line, _ in zip(handle, range(limit))]
    with open(data_file("piqa/valid-labels.lst", "PIQA labels"), encoding="utf-8") as handle:
        labels = [int(line) for line, _ in zip(handle, range(limit))]
    return [{**doc, "label": label} for doc, label in zip(docs, labels, strict=True)]


def piqa_requests(docs: list[dict]) -> list[Instance]:
    """Two loglikelihood requests per example, as lm-eval's ``piqa`` multiple-choice task makes them."""
    return [
        Instance(
            request_type="loglikelihood",
            doc=doc,
            arguments=(f"Question: {doc['goal']}\nAnswer:", f" {choice}"),
            idx=choice_idx,
            metadata=("piqa", doc_id, 1),
        )
        for doc_id, doc in enumerate(docs)
        for choice_idx, choice in enumerate((doc["sol1"], doc["sol2"]))
    ]


def accuracies(docs: list[dict], results: list[tuple[float, bool]]) -> tuple[float, float]:
    """lm-eval's multiple-choice ``acc`` and ``acc_norm`` (log-likelihood over choice length in characters)."""
    lls = np.array([ll for ll, _ in results]).reshape(len(docs), 2)
    lengths = np.array([[len(doc["sol1"]), len(doc["sol2"])] for doc in docs], dtype=float)
    gold = np.array([doc["label"] for doc in docs])
    return float(np.mean(lls.argmax(1) == gold)), float(np.mean((lls / lengths).argmax(1) == gold))


def scored_positions(lm: HFLM, requests: list[Instance]) -> tuple[int, int]:
    """(continuation positions, all input positions) over ``requests``, tokenised as lm-eval does.

    Stock runs the LM head at every input position; FastHFLM only at continuation positions.
    """
    pairs = [lm._encode_pair(*request.args) for request in requests]
    inputs = sum(min(len(context) + len(continuation) - 1, lm.max_length) for context, continuation in pairs)
    return sum(len(continuation) for _, continuation in pairs), inputs


def timed(lm: HFLM, requests: list[Instance]) -> tuple[list[tuple[float, bool]], float]:
    """Results and wall seconds of scoring ``requests``."""
    start = time.perf_counter()
    results = lm.loglikelihood(requests, disable_tqdm=True)
    return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model spec for companion.models.load_model")
    parser.add_argument("--limit", type=int, default=100, help="first N PIQA validation examples (2N requests)")
    parser.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size, the same for both")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed runs of each, alternating stock and fast; the best wall time of each counts")
    args = parser.parse_args()

    loaded = load_model(args.model, device=args.device, dtype="float32")
    docs = piqa_docs(args.limit)
    requests = piqa_requests(docs)
    print(f"model={args.model} device={loaded.device} examples={len(docs)} requests={len(requests)} "
          f"batch_size={args.batch_size}")
    lms = {name: make_lm(loaded.model, loaded.tokenizer, batch_size=args.batch_size, fast=name == "fast")
           for name in ("stock", "fast")}
    seconds: dict[str, list[float]] = {name: [] for name in lms}
    results = {}
    for lm in lms.values():
        lm.loglikelihood(requests[: args.batch_size], disable_tqdm=True)  # warm-up
    for repeat in range(args.repeats):
        for name, lm in lms.items():
            results[name], elapsed = timed(lm, requests)
            seconds[name].append(elapsed)
            print(f"run {repeat + 1}/{args.repeats} {name:5s} wall={elapsed:.2f}s")
    for name in lms:
        acc, acc_norm = accuracies(docs, results[name])
        best = min(seconds[name])
        print(f"{name:5s} best wall={best:.2f}s requests/s={len(requests) / best:.2f} "
              f"acc={acc:.4f} acc_norm={acc_norm:.4f}")
    scored, inputs = scored_positions(lms["fast"], requests)
    print(f"LM head positions: stock {inputs} plus padding, fast {scored} ({100 * scored / inputs:.0f}%)")
    pairs = list(zip(results["stock"], results["fast"], strict=True))
    max_diff = max(abs(stock[0] - fast[0]) for stock, fast in pairs)
    print(f"is_greedy identical for {sum(stock[1] == fast[1] for stock, fast in pairs)}/{len(pairs)} requests")
    print(f"speedup={min(seconds['stock']) / min(seconds['fast']):.2f} max_abs_loglik_diff={max_diff:.2e}")


if __name__ == "__main__":
    main()
