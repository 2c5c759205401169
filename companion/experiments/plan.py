"""What a sweep or a reproduction will compute, and about how long it will take, before it starts.

A plan counts, per model: the calibration forward passes (calibration sets × samples × seqlen tokens),
the prunings to evaluate (before scoring only an upper bound is known: the dense model plus one per
sweep × order × granularity × K > 0 that the sweep evaluates, the baselines once for all sweeps; after
scoring, the sweep prints the exact number of distinct dropped sets), split into the primary tier
(evaluated on ``primary_limit`` examples) and the rest, and per task the documents, lm-eval requests
and tokens one evaluation of each tier forwards (:func:`count_task`, from lm-eval's own requests, so
the limit is respected), plus the speed runs of the speedup notebook.

The time is an **estimate**: tokens divided by a throughput, which is either measured on the loaded
model (:func:`measure_throughput`: a few timed forward passes at the evaluation's typical length and a
few decode steps) or derived from a device's peak FLOP rate, an assumed utilisation and the model's
FLOPs per token (:func:`throughput_from_flops`). Every pruning is costed as the dense model (pruned
models are faster), FastHFLM is assumed to forward each distinct context once, and lm-eval's
truncation at the model's maximum length is ignored, so the estimate errs long.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from companion.errors import CompanionError
from companion.names import GUESS_NOTE, GUESSED_PAPER_TASKS, PERPLEXITY_TASK

# Tokens per character of English text for a BPE tokenizer of the Llama/Mistral kind, when no tokenizer is
# at hand (about 4 characters per token; CJK text such as CMMLU's has more tokens per character).
CHARS_PER_TOKEN = 4.0
Lengths = Callable[[list[str]], list[int]]


@dataclass
class TaskCount:
    """One task's work per evaluation: documents, lm-eval requests and forwarded tokens."""

    task: str
    docs: int
    requests: int
    tokens: int


@dataclass
class Throughput:
    """How fast the device runs the model: forward tokens per second and seconds per decode step."""

    tokens_per_second: float
    decode_step_seconds: float
    source: str


@dataclass
class Plan:
    """The work of a run, per model; ``exact`` tells whether ``prunings`` is known or an upper bound."""

    models: list[str]
    calibrations: list[str]
    samples: int
    seqlen: int
    prunings: int
    exact: bool
    tasks: list[TaskCount]
    limit: int | None
    primary_prunings: int = 0
    primary_tasks: list[TaskCount] = field(default_factory=list)
    primary_limit: int | None = None
    speed_runs: int = 0
    speed_prompt: int = 0
    speed_new_tokens: int = 0
    speed_timed: int = 0
    criteria_tokens: float = 0.0
    yardstick_tokens: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def evaluations(self) -> int:
        """(pruning, task) evaluations per model."""
        return self.prunings * len(self.tasks)

    @property
    def tokens_per_pruning(self) -> int:
        """Tokens forwarded to evaluate one pruning on every task (outside the primary tier)."""
        return sum(t.tokens for t in self.tasks)

    @property
    def tokens(self) -> int:
        """Tokens forwarded by all evaluations of one model, both tiers."""
        primary = sum(t.tokens for t in self.primary_tasks)
        return (self.prunings - self.primary_prunings) * self.tokens_per_pruning + self.primary_prunings * primary


def tail_share(config) -> float:
    """The share of a full forward pass that a pass starting at a removed block costs, on average over
    the blocks: half the decoder layers and the whole LM head (which dominates large-vocabulary models)."""
    from companion.experiments.speed import forward_flops

    flops = forward_flops(config, 256)
    return (0.5 * (flops["total"] - flops["lm_head"]) + flops["lm_head"]) / flops["total"]


def removal_passes(name: str, params: dict, candidates: int) -> float:
    """Full-forward passes over a criterion's windows, per granularity, of the criteria that remove blocks:
    ``ppl`` one pass and one per candidate, ``sleb`` that for each of its ``k_max`` steps over the blocks
    still present, ``taylor`` a forward and a backward (about three passes); others none. Tail passes
    (after a removed block) count as whole ones here and :func:`tail_share` scales them."""
    if name == "ppl":
        return candidates + 1
    if name == "sleb":
        steps = min(params.get("k_max") or max(candidates - 1, 1), candidates)
        return sum(candidates - step + 1 for step in range(steps))
    if name == "taylor":
        return 3
    return 0


def own_pass_tokens(score_settings, candidates: int, samples: int, seqlen: int, share: float) -> float:
    """Dense-forward-equivalent tokens of the criteria of ``score_settings`` (a ``ScoreSettings``) that run
    passes of their own, over its granularities, on ``candidates`` prunable blocks."""
    total = 0.0
    for name in score_settings.own_passes:
        params = score_settings.estimator_params(name)
        windows = min(params.get("windows") or samples, samples)
        scale = 1.0 if name == "taylor" else share
        total += len(score_settings.granularities) * removal_passes(name, params, candidates) * windows * seqlen * scale
    return total


def yardstick_tokens(num_layers: int, granularities: int, windows: int, seqlen: int, share: float) -> float:
    """Dense-forward-equivalent tokens of the yardstick: per granularity one pass and one tail pass per block."""
    return granularities * (1 + num_layers * share) * windows * seqlen


def pruning_upper_bound(sweeps: Sequence, limit: int | None = None) -> tuple[int, int]:
    """Distinct prunings at most, and how many of them are in the primary tier, over ``sweeps``
    (``SweepSettings``): the dense model, one per criterion × granularity × K > 0 that each sweep
    evaluates (criteria outside ``curve_methods`` at the headline K only), and the baselines once (the
    random seeds, each on its shard of the examples, as one, unless ``limit`` examples are too few to
    split among them)."""
    total, primary, baselines = 1, 0, set()
    for sweep in sweeps:
        ks = [k for k in sweep.drops if k > 0]
        heads = min(len(ks), 1)
        curve = sweep.methods if sweep.curve_methods is None else [m for m in sweep.methods if m in sweep.curve_methods]
        total += len(sweep.granularities) * (len(curve) * len(ks) + (len(sweep.methods) - len(curve)) * heads)
        if sweep.primary_limit:
            primary += len(sweep.granularities) * len(set(sweep.primary_methods) & set(sweep.methods)) * heads
        split = sweep.random_seeds > 1 and (limit is None or limit >= sweep.random_seeds)
        baselines |= {(name.split(":")[0] if split else name, g, k) for name in sweep.baseline_names
                      for g in sweep.granularities for k in ks}  # seeds that split the examples cost one pruning
    tiered = any(sweep.primary_limit for sweep in sweeps)
    return total + len(baselines), primary + tiered


def perplexity_windows(total_tokens: int, seqlen: int, cap: int | None) -> int:
    """Windows of ``seqlen`` tokens that perplexity evaluates: all complete ones, at most ``cap``."""
    windows = total_tokens // seqlen
    return windows if cap is None else min(windows, cap)


def forwarded_tokens(pairs: Sequence[tuple[str, str]], lengths: Lengths) -> int:
    """Tokens a (context, continuation) request list forwards when each distinct context is run once."""
    contexts = list(dict.fromkeys(context for context, _ in pairs))
    return sum(lengths(contexts)) + sum(lengths([continuation for _, continuation in pairs]))


def char_lengths(chars_per_token: float = CHARS_PER_TOKEN) -> Lengths:
    """Token lengths estimated from characters (for when no tokenizer is at hand)."""
    return lambda texts: [math.ceil(len(text) / chars_per_token) for text in texts]


def tokenizer_lengths(tokenizer) -> Lengths:
    """Token lengths from ``tokenizer`` (no special tokens)."""
    return lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def count_task(task: str, settings, lengths: Lengths) -> TaskCount:
    """Documents, requests and tokens of one evaluation of ``task`` under ``settings`` (``EvalSettings``).

    lm-eval tasks are built as the evaluation builds them (offline configs or the Hub) and their requests
    are generated with the same limit; perplexity counts the WikiText-2 test windows.
    """
    from companion.experiments.evaluation import loaded_task, sample_indices
    from companion.method.calibration import load_rows

    if task == PERPLEXITY_TASK:
        rows, _ = load_rows("wikitext2", "test", data_source="hub" if settings.online else "local")
        total = lengths(["\n\n".join(rows)])[0]
        windows = perplexity_windows(total, settings.ppl_seqlen, settings.ppl_windows)
        return TaskCount(task, windows, windows, windows * settings.ppl_seqlen)
    docs = requests = tokens = 0
    with contextlib.redirect_stderr(io.StringIO()):  # lm-eval's and datasets' progress bars
        leaves = list(loaded_task(task, settings.online, settings.num_fewshot)["tasks"].values())
    for leaf in leaves:
        chosen = sample_indices(len(leaf.eval_docs), settings.limit, settings.sample_seed, settings.shard)
        with contextlib.redirect_stderr(io.StringIO()):
            leaf.build_all_requests(samples=chosen, rank=0, world_size=1)
        pairs = [(inst.arguments[0], inst.arguments[1] if len(inst.arguments) > 1 else "") for inst in leaf.instances]
        docs += len({inst.doc_id for inst in leaf.instances})
        requests += len(pairs)
        tokens += forwarded_tokens(pairs, lengths)
    return TaskCount(task, docs, requests, tokens)


def build_plan(models: Sequence[str], sweeps: Sequence, eval_settings, lengths: Lengths,
               speed: dict | None = None) -> Plan:
    """The plan of a run of ``sweeps`` (``SweepSettings``, one per calibration set): ``eval_settings``
    (``EvalSettings``) gives tasks and limit; ``speed`` (optional) holds the speed runs' ``granularities``,
    ``drops``, ``prompt``, ``new_tokens``, ``warmup``, ``repeats``."""
    eval_settings.validate()
    prunings, primary = pruning_upper_bound(sweeps, eval_settings.limit)
    first = sweeps[0]
    plan = Plan(list(models), [s.calibration for s in sweeps], first.samples, first.seqlen, prunings, False,
                [count_task(task, eval_settings, lengths) for task in eval_settings.tasks], eval_settings.limit)
    if primary and first.primary_limit:
        wide = first.primary_evaluation(eval_settings)
        plan.primary_prunings, plan.primary_limit = primary, first.primary_limit
        plan.primary_tasks = [count_task(task, wide, lengths) if task in wide.tasks else count
                              for task, count in zip(eval_settings.tasks, plan.tasks)]
    if speed:
        plan.speed_runs = len(speed["granularities"]) * len(set(speed["drops"]) | {0})
        plan.speed_prompt, plan.speed_new_tokens = speed["prompt"], speed["new_tokens"]
        plan.speed_timed = speed["warmup"] + speed["repeats"]
    return plan


def estimate_seconds(plan: Plan, throughput: Throughput) -> dict[str, float]:
    """Seconds per model for scoring, evaluation and speed runs, and in total over all models."""
    tps = throughput.tokens_per_second
    if tps <= 0:
        raise CompanionError("the throughput must be positive")
    scoring = (len(plan.calibrations) * plan.samples * plan.seqlen + plan.criteria_tokens) / tps
    evaluation = plan.tokens / tps
    speed = plan.speed_runs * plan.speed_timed * (
        plan.speed_prompt / tps + max(plan.speed_new_tokens - 1, 0) * throughput.decode_step_seconds)
    yardstick = plan.yardstick_tokens / tps
    per_model = scoring + evaluation + speed + yardstick
    return {"scoring": scoring, "evaluation": evaluation, "speed": speed, "yardstick": yardstick,
            "per_model": per_model, "total": per_model * len(plan.models)}


def typical_length(plan: Plan) -> int:
    """The mean tokens per request over the lm-eval tasks (perplexity windows excluded), at least 16."""
    tasks = [t for t in plan.tasks if t.task != PERPLEXITY_TASK and t.requests]
    if not tasks:
        return 512
    return max(16, round(sum(t.tokens for t in tasks) / sum(t.requests for t in tasks)))


def flops_per_token(config, seqlen: int) -> float:
    """Forward FLOPs per token of ``config`` at sequence length ``seqlen``, the LM head on every position."""
    from companion.experiments.speed import forward_flops
    from companion.model.layouts import config_text

    flops = forward_flops(config, seqlen)
    text = config_text(config)
    return (flops["total"] - flops["lm_head"]) / seqlen + 2 * text.hidden_size * text.vocab_size


def weight_bytes(config, bytes_per_param: int = 2) -> float:
    """Bytes of the weights a decode step reads: projections, MLPs, LM head (embeddings are gathered)."""
    from companion.experiments.speed import forward_flops

    flops = forward_flops(config, 1)
    return (flops["attn_proj"] + flops["mlp"] + flops["lm_head"]) / 2 * bytes_per_param


def throughput_from_flops(config, tflops: float, mfu: float, seqlen: int, bandwidth_gbs: float,
                          bytes_per_param: int = 2) -> Throughput:
    """A device's throughput for ``config`` from its peak ``tflops`` at utilisation ``mfu``; a decode step
    takes the longer of its FLOPs at that rate and reading the weights at ``bandwidth_gbs``."""
    if not (tflops > 0 and 0 < mfu <= 1 and bandwidth_gbs > 0):
        raise CompanionError("need --tflops > 0, 0 < --mfu <= 1 and --bandwidth > 0")
    rate = tflops * 1e12 * mfu
    tps = rate / flops_per_token(config, seqlen)
    step = max(flops_per_token(config, 1) / rate, weight_bytes(config, bytes_per_param) / (bandwidth_gbs * 1e9))
    return Throughput(tps, step, f"{tflops:g} TFLOPS peak × {mfu:.0%} utilisation, {bandwidth_gbs:g} GB/s "
                                f"(FLOPs per token at {seqlen} tokens: {flops_per_token(config, seqlen):.3g})")


def measure_throughput(loaded, seqlen: int, batch_size: int, repeats: int = 3) -> Throughput:
    """Forward tokens per second of ``loaded`` on ``batch_size`` random sequences of ``seqlen`` tokens
    (one warm-up, then the median of ``repeats``) and the seconds of one greedy decode step."""
    import statistics

    import torch

    from companion.experiments.speed import _synchronizer, make_prompt, timed_greedy

    model = loaded.model
    device = model.get_input_embeddings().weight.device
    sync = _synchronizer(device)
    ids = make_prompt(model.config.get_text_config().vocab_size, seqlen, batch_size).to(device)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            sync()
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            sync()
            if i:
                times.append(time.perf_counter() - start)
    greedy = timed_greedy(model, ids[:1, : min(seqlen, 64)], 9)
    return Throughput(batch_size * seqlen / statistics.median(times), greedy.decode_s / 8,
                      f"measured on {device} ({str(loaded.dtype).replace('torch.', '')}): {repeats} forwards "
                      f"of {batch_size} × {seqlen} tokens, 8 decode steps")


def duration(seconds: float) -> str:
    """Seconds in words: ``45 s``, ``12 min`` or ``1.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_plan(plan: Plan, throughput: Throughput | None = None) -> str:
    """The plan as text: what runs, per task the work of one evaluation, and the estimated time."""
    bound = "" if plan.exact else "at most "
    limit = "all examples" if plan.limit is None else f"limit {plan.limit} per task (perplexity: windows)"
    lines = [f"plan: {len(plan.models)} model(s): {', '.join(plan.models)}",
             f"  calibration: {', '.join(plan.calibrations)}: {plan.samples} samples × {plan.seqlen} tokens each",
             f"  prunings to evaluate per model: {bound}{plan.prunings} distinct (dense included; the exact "
             "number is known after scoring)" if not plan.exact else
             f"  prunings to evaluate per model: {plan.prunings} distinct (dense included)",
             f"  tasks ({len(plan.tasks)}, {limit}): documents / requests / tokens per evaluation"]
    labels = [t.task + ("*" if t.task in GUESSED_PAPER_TASKS else "") for t in plan.tasks]
    width = max(map(len, labels), default=0)
    for label, t in zip(labels, plan.tasks):
        lines.append(f"    {label:<{width}} {t.docs:>7} {t.requests:>8} {t.tokens:>11,}")
    if any(label.endswith("*") for label in labels):
        lines.append(f"    * {GUESS_NOTE}")
    lines.append(f"  evaluations per model: {bound}{plan.evaluations} (pruning, task); "
                 f"{plan.tokens_per_pruning:,} tokens per pruning")
    if plan.primary_prunings:
        primary = sum(t.tokens for t in plan.primary_tasks)
        lines.append(f"  of which the primary tier: {plan.primary_prunings} prunings on {plan.primary_limit} examples "
                     f"per task, {primary:,} tokens per pruning")
    if plan.criteria_tokens:
        lines.append(f"  criteria that remove blocks (ppl, sleb, taylor): about {plan.criteria_tokens:,.0f} "
                     "dense-forward-equivalent tokens")
    if plan.yardstick_tokens:
        lines.append(f"  yardstick (every block removed alone, held-out NLL): about {plan.yardstick_tokens:,.0f} "
                     "dense-forward-equivalent tokens")
    if plan.speed_runs:
        lines.append(f"  speed: {plan.speed_runs} runs × {plan.speed_timed} (warm-up + timed) of a "
                     f"{plan.speed_prompt}-token prompt and {plan.speed_new_tokens} generated tokens")
    lines += [f"  note: {note}" for note in plan.notes]
    if throughput is not None:
        est = estimate_seconds(plan, throughput)
        lines += [f"  estimated time (an estimate: tokens / throughput, every pruning at the dense cost): "
                  f"{duration(est['total'])} in all, per model {duration(est['per_model'])} = scoring "
                  f"{duration(est['scoring'])} + evaluation {duration(est['evaluation'])} + speed "
                  f"{duration(est['speed'])}" + (f" + yardstick {duration(est['yardstick'])}" if plan.yardstick_tokens
                                                  else ""),
                  f"  throughput: {throughput.tokens_per_second:,.0f} tokens/s forward, "
                  f"{throughput.decode_step_seconds * 1e3:.1f} ms per decode step ({throughput.source})"]
    return "\n".join(lines)
