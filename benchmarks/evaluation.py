"""Time stock lm-eval ``HFLM`` against ``FastHFLM`` on PIQA log-likelihood requests.

Both wrap the same in-memory model at the same batch size and score the same requests, built as
lm-eval's ``piqa`` task builds them (context ``"Question: {goal}\\nAnswer:"``, continuations
``" {sol1}"`` and ``" {sol2}"``) from the local ``$COMPANION_DATA_DIR/piqa`` files. Prints the wall
times, the speedup, the largest per-request log-likelihood difference and both models' acc and
acc_norm; the last line is ``speedup=<x> max_abs_loglik_diff=<y>``.
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


def timed(lm: HFLM, requests: list[Instance], warmup: int) -> tuple[list[tuple[float, bool]], float]:
    """Results and wall seconds of scoring ``requests``, after scoring the first ``warmup`` once untimed."""
    lm.loglikelihood(requests[:warmup], disable_tqdm=True)
    start = time.perf_counter()
    results = lm.loglikelihood(requests, disable_tqdm=True)
    return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model spec for companion.models.load_model")
    parser.add_argument("--limit", type=int, default=100, help="first N PIQA validation examples (2N requests)")
    parser.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size, the same for both")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    args = parser.parse_args()

    loaded = load_model(args.model, device=args.device, dtype="float32")
    docs = piqa_docs(args.limit)
    requests = piqa_requests(docs)
    print(f"model={args.model} device={loaded.device} examples={len(docs)} requests={len(requests)} "
          f"batch_size={args.batch_size}")
    runs = {}
    for name, fast in (("stock", False), ("fast", True)):
        lm = make_lm(loaded.model, loaded.tokenizer, batch_size=args.batch_size, fast=fast)
        results, seconds = timed(lm, requests, warmup=args.batch_size)
        acc, acc_norm = accuracies(docs, results)
        runs[name] = (results, seconds)
        print(f"{name:5s} wall={seconds:.2f}s requests/s={len(requests) / seconds:.2f} "
              f"acc={acc:.4f} acc_norm={acc_norm:.4f}")
    (stock, stock_s), (fast, fast_s) = runs["stock"], runs["fast"]
    max_diff = max(abs(a[0] - b[0]) for a, b in zip(stock, fast, strict=True))
    greedy_same = sum(a[1] == b[1] for a, b in zip(stock, fast, strict=True))
    print(f"is_greedy identical for {greedy_same}/{len(requests)} requests")
    print(f"speedup={stock_s / fast_s:.2f} max_abs_loglik_diff={max_diff:.2e}")


if __name__ == "__main__":
    main()
