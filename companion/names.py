"""The names users type for granularities and tasks (criteria have their registry:
:mod:`companion.method.criteria`). Everything that validates or loops over these names imports them
from here."""

from __future__ import annotations

from collections.abc import Iterable

GRANULARITIES = ("attn", "mlp", "layer")
# Where each granularity's block starts and ends among the hidden states a scoring pass records: (point,
# layer offset) at its input and its output; "boundary" i is layer i's input, "mid" i the residual
# stream between layer i's attention and its MLP.
ENDPOINTS = {"attn": (("boundary", 0), ("mid", 0)), "mlp": (("mid", 0), ("boundary", 1)),
             "layer": (("boundary", 0), ("boundary", 1))}
PERPLEXITY_TASK = "wikitext2_ppl"
# The null references: seeded random drop sets (one order per seed, named ``random:<seed>``) and the last K.
RANDOM = "random"
LAST = "last"
RANDOM_PREFIX = f"{RANDOM}:"
# The accuracy each task contributes to a mean: length-normalised where the choices differ in length
# and the convention of the field reports it (HellaSwag, ARC-Challenge, OpenBookQA), plain otherwise.
PRIMARY_METRIC = {"hellaswag": "acc_norm", "arc_challenge": "acc_norm", "openbookqa": "acc_norm",
                  PERPLEXITY_TASK: "perplexity"}
# The 11 tasks the paper names, then two the paper counts (13) but does not name: our guess.
PAPER_TASKS = ("piqa", "hellaswag", "winogrande", "wsc273", "commonsense_qa", "mmlu", "cmmlu", "arc_easy",
               "arc_challenge", "openbookqa", "race")
GUESSED_PAPER_TASKS = ("boolq", "lambada_openai")
GUESS_NOTE = "our guess: the paper counts 13 tasks but names 11"
# Accuracy of guessing uniformly among a task's choices (lambada_openai predicts a word: no floor).
CHANCE = {"piqa": 0.5, "arc_easy": 0.25, "arc_challenge": 0.25, "hellaswag": 0.25, "winogrande": 0.5, "boolq": 0.5,
          "openbookqa": 0.25, "commonsense_qa": 0.2, "mmlu": 0.25, "cmmlu": 0.25, "race": 0.25, "wsc273": 0.5,
          "lambada_openai": 0.0}


def task_label(task: str) -> str:
    """``task``, marked as our guess where it is one of ``GUESSED_PAPER_TASKS``."""
    return f"{task} ({GUESS_NOTE})" if task in GUESSED_PAPER_TASKS else task


def in_mean_accuracy(task: str) -> bool:
    """Whether ``task`` enters mean accuracy, the paper's metric: a multiple-choice task (a known chance
    level above 0). LAMBADA (chance 0) and perplexity are reported on their own."""
    return CHANCE.get(task, 0.0) > 0


def primary_metric(task: str) -> str:
    """The metric of ``task`` that enters mean accuracy (or perplexity)."""
    return PRIMARY_METRIC.get(task, "acc")


def baseline_names(baselines: Iterable[str], random_seeds: int) -> list[str]:
    """The baseline orders chosen by ``baselines``: ``random:0`` … ``random:<seeds-1>`` where ``random``
    is among them, then ``last``."""
    chosen = set(baselines)
    return [f"{RANDOM_PREFIX}{seed}" for seed in range(random_seeds)] * (RANDOM in chosen) + [LAST] * (LAST in chosen)


def random_seed(method: str) -> int | None:
    """The seed of a random drop set's name ``random:<seed>``; None for any other method."""
    tail = method[len(RANDOM_PREFIX):]
    return int(tail) if method.startswith(RANDOM_PREFIX) and tail.isdigit() else None
