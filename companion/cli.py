"""``python -m companion``: score blocks, derive drop orders, prune, evaluate, sweep and time models."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from companion.errors import CompanionError
from companion.model.embedded import EMBEDDED_MODELS
from companion.model.loading import DEFAULT_MODEL
from companion.names import ALL_ENTROPY_METHODS, SIMILARITY_METHODS
from companion.paths import model_slug
from companion.profiles import EVAL_BATCH_SIZE, csv_list, int_list, profile

DESCRIPTION = """EntroDrop companion: entropy-based block pruning of decoder-only LLMs.

commands: score, order, prune, info (the method); eval, sweep, speed, tasks (evaluation);
reproduce (the figure notebooks); plan (what a profile computes, and a time estimate).

typical use:
  python -m companion score --model gemma-3-270m --data wikitext2 --out scores.json
  python -m companion order scores.json --method knn --granularity attn
  python -m companion prune --model gemma-3-270m --scores scores.json --method knn --granularity layer --drop 4 --out pruned/
  python -m companion sweep --profile smoke --out results/
  python -m companion speed --scores scores.json --method knn --granularity attn,layer --drops 0,2,4
"""


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` only where the help does not state the default already and there is
    one to state (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="a Hugging Face id, a local folder, or an embedded model (no download): "
                             + ", ".join(EMBEDDED_MODELS))
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")


def _order_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="knn", help="knn, bucket, renyi (entropy) or cosine, angular (similarity)")
    parser.add_argument("--granularity", default="attn", help="attn, mlp or layer")
    parser.add_argument("--protect", default="auto",
                        help="layers never dropped: auto (detected compression stage; none for similarity methods), "
                             "none, or e.g. first:2,last:1 (the paper's code) or 0,1,17")


def _file_ref(path: str) -> dict:
    """A user-given file as results record it: its name and content hash, never where it lies."""
    from companion.io import sha256_file

    return {"name": Path(path).name, "sha256": sha256_file(path)}


def cmd_score(args: argparse.Namespace) -> int:
    import functools

    from companion import store
    from companion.method.calibration import load_documents
    from companion.method.scoring import ScoreSettings, cached_scores, scores_key
    from companion.model.loading import load_model, model_identity

    settings = ScoreSettings(
        estimators=csv_list(args.estimators),
        params={"knn": {"k": args.knn_k}, "bucket": {"bins": args.bucket_bins}, "renyi": {"alpha": args.renyi_alpha}},
        batch_size=args.batch_size,
    )
    settings.validate()
    out = Path(args.out)
    docs = load_documents(args.data, args.split, data_source=args.data_source)
    model = functools.lru_cache(maxsize=1)(lambda: load_model(args.model, args.device, args.dtype))
    identity = model_identity(args.model, args.device, args.dtype) or model().identity()
    key = scores_key(identity, docs.provenance(), args.samples, args.seqlen, args.seed, settings)
    if not args.force and store.read(out, key) is not None:
        print(f"{out} already holds these scores (key {store.digest(key)[:12]}; --force recomputes)", file=sys.stderr)
        return 0
    result = cached_scores(out, model, docs, args.samples, args.seqlen, args.seed, settings, identity,
                           progress=not args.quiet, force=args.force)
    print(f"wrote {out} ({result['num_layers']} layers, {len(result['blocks'])} block scores; documents "
          f"{docs.provenance()['path']}, sha256 {docs.provenance()['sha256'][:12]})", file=sys.stderr)
    return 0


def cmd_order(args: argparse.Namespace) -> int:
    from companion.method.orders import drop_order
    from companion.method.scoring import read_scores

    order = drop_order(read_scores(args.scores), args.method, args.granularity, args.protect)
    if args.format == "rank":
        print(order.rank_string())
    elif args.format == "json":
        print(json.dumps(order.to_json(), indent=2))
    else:
        print(" ".join(map(str, order.order)))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from companion.method.orders import drop_order
    from companion.method.scoring import read_scores
    from companion.model.checkpoints import save_pruned
    from companion.model.loading import load_model
    from companion.model.surgery import Pruning, apply_pruning

    if args.layers is not None:
        layers = [int(v) for v in args.layers.split(",") if v.strip()]
        source = {"selection": "explicit --layers"}
    else:
        if args.scores is None or args.drop is None:
            raise CompanionError("prune needs --scores and --drop (or explicit --layers)")
        order = drop_order(read_scores(args.scores), args.method, args.granularity, args.protect)
        layers = order.drop_set(args.drop)
        source = {"scores": _file_ref(args.scores), "order": order.to_json()}
    loaded = load_model(args.model, args.device, args.dtype)
    report = apply_pruning(loaded.model, Pruning(args.granularity, layers))
    save_pruned(loaded.model, loaded.tokenizer, args.out, {**report, "base_model": loaded.provenance(), **source})
    print(f"dropped {args.granularity} blocks {layers}; parameters {report['params_before']:,} -> "
          f"{report['params_after']:,}; saved to {args.out}", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from companion.model.layouts import (
        active_parameters,
        layer_blocks,
        layouts_of,
        prunable,
        text_config,
    )
    from companion.model.loading import load_model
    from companion.model.surgery import count_parameters

    loaded = load_model(args.model, args.device, args.dtype)
    config = text_config(loaded.model)
    blocks = layer_blocks(loaded.model)
    pruning = getattr(loaded.model, "companion_pruning", None)
    info = {**loaded.provenance(), "layouts": layouts_of(loaded.model), "hidden_size": config.hidden_size,
            "attention_layers": sum(b.attention for b in blocks), "moe_layers": sum(b.moe for b in blocks),
            "prunable_attn": prunable(loaded.model, "attn"),
            "parameters": count_parameters(loaded.model),
            "active_parameters": active_parameters(loaded.model, config),
            "pruning": None if pruning is None else {"granularity": pruning.granularity, "layers": pruning.layers}}
    print(json.dumps(info, indent=2))
    return 0



def _eval_settings(args: argparse.Namespace, prof: dict):
    from companion.experiments.evaluation import EvalSettings

    limit = prof["limit"] if args.limit is None else (None if args.limit == -1 else args.limit)
    settings = EvalSettings(tasks=csv_list(args.tasks) or prof["tasks"], limit=limit, batch_size=args.batch_size,
                            fast=not args.stock_lm, ppl_seqlen=prof["ppl_seqlen"], ppl_chunks=prof["ppl_chunks"],
                            data_source=args.data_source, progress=not args.quiet)
    settings.validate()
    return settings


def cmd_tasks(args: argparse.Namespace) -> int:
    from companion.experiments.tasks import offline_differences, write_task_configs

    folder = write_task_configs(Path(args.out), csv_list(args.tasks) or None)
    for task, note in sorted(offline_differences().items()):
        print(f"{task}: {note}", file=sys.stderr)
    print(f"wrote task configs to {folder}; run them with: lm_eval --include_path {folder} --tasks piqa ...")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from companion.experiments.evaluation import evaluate
    from companion.io import atomic_write_json
    from companion.method.orders import drop_order
    from companion.method.scoring import read_scores
    from companion.model.loading import load_model
    from companion.model.surgery import Pruning, apply_pruning
    from companion.provenance import environment, timestamp

    settings = _eval_settings(args, profile(args.profile))
    pruning = None
    if args.layers is not None or args.drop:
        if args.layers is not None:
            layers = int_list(args.layers)
        elif args.scores is None:
            raise CompanionError("--drop needs --scores (or give explicit --layers)")
        else:
            layers = drop_order(read_scores(args.scores), args.method, args.granularity, args.protect).drop_set(args.drop)
        pruning = Pruning(args.granularity, layers)
    loaded = load_model(args.model, args.device, args.dtype)
    if pruning is not None:
        apply_pruning(loaded.model, pruning)
    else:
        pruning = getattr(loaded.model, "companion_pruning", None)
    rows = evaluate(loaded, settings, pruning)
    for row in rows:
        stderr = "" if row["stderr"] is None else f" ± {row['stderr']:.4f}"
        print(f"{row['task']:>16} {row['metric']:>12} {row['value']:.4f}{stderr} (n={row['n']})")
    if args.out:
        atomic_write_json(args.out, {"schema": "companion.eval/1", "created": timestamp(), "model": loaded.provenance(),
                                     "pruning": None if pruning is None else vars(pruning),
                                     "settings": vars(settings), "environment": environment(), "rows": rows})
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import functools

    from companion.experiments import plan as planning
    from companion.experiments.sweep import fit_drops, model_drops, profile_sweep, run_sweep, sweep_path
    from companion.method.calibration import check_available, parse_calibration
    from companion.model.loading import load_model, model_identity

    prof = profile(args.profile, device=args.device, dtype=args.dtype)
    eval_settings = _eval_settings(args, prof)
    models = [args.model] if args.model else prof["models"]
    calibrations = csv_list(args.calibration) or prof["calibrations"]
    for calibration in calibrations:
        check_available(*parse_calibration(calibration), args.data_source)
    protect = args.protect or prof["protect"]
    methods = csv_list(args.methods) or prof["methods"]
    granularities = csv_list(args.granularity) or prof["granularities"]
    samples, seqlen = args.samples or prof["samples"], args.seqlen or prof["seqlen"]
    for spec in models:
        model = functools.lru_cache(maxsize=1)(lambda spec=spec: load_model(spec, prof["device"], prof["dtype"]))
        identity = model_identity(spec, prof["device"], prof["dtype"])
        loaded = model()
        layers = len(_layers(loaded))
        model_prof = profile(args.profile, spec, device=args.device, dtype=args.dtype)
        drops = sorted({0, *int_list(args.drops)}) if args.drops else model_drops(model_prof, layers)
        drops = fit_drops(drops, layers, protect, model_slug(spec))
        sweeps = [profile_sweep(model_prof, calibration, drops, layers, primary=i == 0, samples=samples,
                                seqlen=seqlen, seed=args.seed, methods=methods, granularities=granularities,
                                protect=protect, data_source=args.data_source)
                  for i, calibration in enumerate(calibrations)]
        plan = planning.build_plan([spec], sweeps, eval_settings, planning.tokenizer_lengths(loaded.tokenizer))
        throughput = planning.measure_throughput(loaded, planning.typical_length(plan), eval_settings.batch_size)
        print(planning.format_plan(plan, throughput), file=sys.stderr)
        for settings in sweeps:
            calibration = settings.calibration
            out = Path(args.out) / model_slug(spec)
            sweep = run_sweep(model, settings, eval_settings, out, identity, progress=not args.quiet)
            print(f"{sweep_path(out, calibration).with_suffix('.csv')}: {len(sweep['rows'])} rows", file=sys.stderr)
    return 0


def _layers(loaded) -> list:
    from companion.model.adapters import decoder_layers

    return decoder_layers(loaded.model)


def cmd_plan(args: argparse.Namespace) -> int:
    import json as json_module

    from companion.analysis.runs import resolve_parameters, run_plan
    from companion.experiments import plan as planning

    if args.tflops is None:  # measured on each model
        _print_run_plan({"profile": args.profile, "model": args.model, "device": args.device, "dtype": args.dtype,
                         "data_source": args.data_source, "calibration": args.calibration, "tasks": args.tasks,
                         "limit": args.limit}, sys.stdout)
        return 0
    prof = profile(args.profile)
    models = [args.model] if args.model else prof["models"]
    run = resolve_parameters({"profile": args.profile, "model": models[0], "device": args.device,
                              "dtype": args.dtype, "data_source": args.data_source, "calibration": args.calibration,
                              "tasks": args.tasks, "limit": args.limit})
    if not args.model_config:
        raise CompanionError("--tflops needs --model-config (the model's config.json)")
    from transformers import AutoConfig

    try:
        values = json_module.loads(Path(args.model_config).read_text(encoding="utf-8"))
        config = AutoConfig.for_model(**values)
    except (OSError, ValueError, KeyError) as exc:
        raise CompanionError(f"cannot read the model config {args.model_config} ({exc})") from exc
    plan = run_plan(run, models, planning.char_lengths(args.chars_per_token))
    plan.notes.append(f"tokens estimated as characters / {args.chars_per_token:g}")
    throughput = planning.throughput_from_flops(config, args.tflops, args.mfu, planning.typical_length(plan),
                                                args.bandwidth)
    print(planning.format_plan(plan, throughput))
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    from companion.experiments.speed import speed_key, speed_sweep, write_speed
    from companion.method.scoring import read_scores
    from companion.model.loading import load_model

    loaded = load_model(args.model, args.device, args.dtype)
    scores = read_scores(args.scores)
    measure = {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batch_size": args.batch_size,
               "warmup": args.warmup, "repeats": args.repeats}
    settings = {"method": args.method, "protect": args.protect, "granularities": csv_list(args.granularity),
                "drops": sorted(set(int_list(args.drops)) | {0}), **measure}
    rows = []
    for granularity in settings["granularities"]:
        rows += speed_sweep(loaded, scores, args.method, granularity, settings["drops"], args.protect, **measure)
    for row in rows:
        print(f"{row['granularity']:>5} K={row['K']:<3} prefill {row['prefill_tps']:.1f} tok/s "
              f"(x{row['measured_speedup_prefill']:.2f}, FLOPs x{row['expected_speedup_prefill']:.2f})  "
              f"decode {row['decode_tps']:.1f} tok/s (x{row['measured_speedup_decode']:.2f}, "
              f"FLOPs x{row['expected_speedup_decode']:.2f})")
    write_speed(rows, args.out, {"model": loaded.provenance(), "scores": _file_ref(args.scores), **settings},
                speed_key(loaded.identity(), scores, settings))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from companion.analysis.reproduce import run_notebooks

    parameters = {"profile": args.profile, "model": args.model, "device": args.device, "dtype": args.dtype,
                  "data_source": args.data_source, "results_dir": args.results}
    parameters.update({k: v for k, v in (("calibration", args.calibration), ("limit", args.limit)) if v is not None})
    if not args.no_plan:
        _print_run_plan(parameters)
    executed = run_notebooks(Path(args.notebooks), Path(args.out), parameters, csv_list(args.only) or None,
                             Path(args.book_figures) if args.book_figures else None, args.force)
    print(f"executed {len(executed)} notebook(s): {', '.join(executed) or 'none (all up to date)'}", file=sys.stderr)
    return 0


def _print_run_plan(parameters: dict, stream=sys.stderr) -> None:
    """The plan of a reproduction per model (each with its own drop counts and sample sizes), measured on
    that model, which is then released before the notebooks."""
    import gc

    import torch

    from companion.analysis.runs import resolve_parameters, run_plan
    from companion.experiments import plan as planning
    from companion.method.calibration import check_available, parse_calibration
    from companion.model.loading import load_model

    run = resolve_parameters(parameters)
    for calibration in run.calibrations:
        check_available(*parse_calibration(calibration), run.data_source)
    total = 0.0
    for model in run.models:
        mine = run.for_model(model)
        loaded = load_model(mine.model, mine.device, mine.dtype)
        plan = run_plan(mine, [mine.model], planning.tokenizer_lengths(loaded.tokenizer))
        throughput = planning.measure_throughput(loaded, planning.typical_length(plan), EVAL_BATCH_SIZE)
        print(planning.format_plan(plan, throughput), file=stream)
        total += planning.estimate_seconds(plan, throughput)["total"]
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if len(run.models) > 1:
        print(f"estimated time of the {len(run.models)} models together: {planning.duration(total)}", file=stream)


def _eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="default", help="smoke, default or paper: the settings of what is not given")
    parser.add_argument("--tasks", help="comma-separated lm-eval task names, plus wikitext2_ppl (default: the profile's)")
    parser.add_argument("--limit", type=int, help="examples per task (default: the profile's; -1 for all)")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help="lm-eval batch size: requests per forward pass")
    parser.add_argument("--stock-lm", action="store_true",
                        help="use lm-eval's stock HFLM instead of the faster, equivalent FastHFLM")
    parser.add_argument("--data-source", choices=["auto", "hub", "local"], default="auto",
                        help="task and calibration data: the Hub when reachable (auto), the Hub, or COMPANION_DATA_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (lm-eval's included)")


def _run_args(parser: argparse.ArgumentParser) -> None:
    """The options that override a profile's model, device, dtype, data source and calibration sets."""
    parser.add_argument("--model", help="Hugging Face id, local folder or embedded model (default: the profile's)")
    parser.add_argument("--device", help="device (default: the profile's)")
    parser.add_argument("--dtype", help="dtype (default: the profile's)")
    parser.add_argument("--data-source", choices=["auto", "hub", "local"],
                        help="calibration and task data: the Hub when reachable (auto), the Hub, or COMPANION_DATA_DIR "
                             "(default: the profile's)")
    parser.add_argument("--calibration", help="comma-separated calibration sets (default: the profile's; offline, "
                                              "the paper profile needs e.g. c4,wikitext2 instead of c4:train)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m companion", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = _DefaultsHelpFormatter

    p = sub.add_parser("score", help="one pass over calibration data: entropy and similarity of every block",
                       formatter_class=fmt)
    _model_args(p)
    p.add_argument("--data", default="c4", help="wikitext2, c4, or a .txt/.jsonl/.json/.parquet file of documents")
    p.add_argument("--split", default=None, help="split of a named source (default: validation)")
    p.add_argument("--data-source", choices=["auto", "hub", "local"], default="auto",
                   help="for wikitext2/c4: the Hugging Face Hub, the local copies under COMPANION_DATA_DIR, "
                        "or auto (the Hub when reachable, else local)")
    p.add_argument("--samples", type=int, default=128, help="number of calibration windows")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per window")
    p.add_argument("--seed", type=int, default=2024, help="seed of the window draw")
    p.add_argument("--estimators", default=",".join((*ALL_ENTROPY_METHODS, *SIMILARITY_METHODS)),
                   help="comma-separated (default: all, the diagnostics knn_unit and bucket_mm included)")
    p.add_argument("--knn-k", type=int, default=25, help="k of the KNN estimator")
    p.add_argument("--bucket-bins", type=int, default=80, help="bins per dimension of the bucket estimator")
    p.add_argument("--renyi-alpha", type=float, default=4.0, help="order of the Renyi estimator")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward batch")
    p.add_argument("--out", default="scores.json", help="scores file to write")
    p.add_argument("--force", action="store_true", help="recompute even if --out already holds these scores")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("order", help="print the drop order of a method from a scores file", formatter_class=fmt)
    p.add_argument("scores", help="scores file written by 'score'")
    _order_args(p)
    p.add_argument("--format", choices=["list", "rank", "json"], default="list",
                   help="list: layer indices in drop order; rank: the paper code's rank string; json: everything")
    p.set_defaults(func=cmd_order)

    p = sub.add_parser("prune", help="drop K blocks and save the pruned checkpoint", formatter_class=fmt)
    _model_args(p)
    p.add_argument("--scores", help="scores file written by 'score'")
    _order_args(p)
    p.add_argument("--drop", type=int, help="number of blocks to drop")
    p.add_argument("--layers", help="explicit comma-separated layers to drop instead of --scores/--drop")
    p.add_argument("--out", required=True, help="folder for the pruned checkpoint")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("info", help="describe a model: family, layers, parameters, pruning", formatter_class=fmt)
    _model_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("tasks", help="write offline lm-eval task configs fed from COMPANION_DATA_DIR",
                       formatter_class=fmt)
    p.add_argument("--out", required=True, help="folder for the configs (use with lm_eval --include_path)")
    p.add_argument("--tasks", help="comma-separated task names (default: all available)")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("eval", help="evaluate a dense or pruned model with lm-eval (cached)", formatter_class=fmt)
    _model_args(p)
    _eval_args(p)
    p.add_argument("--scores", help="scores file, to prune by a drop order before evaluating")
    _order_args(p)
    p.add_argument("--drop", type=int, default=0, help="number of blocks to drop (with --scores)")
    p.add_argument("--layers", help="explicit comma-separated layers to drop instead of --scores/--drop")
    p.add_argument("--out", help="JSON file for the results (default: none written)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sweep", help="score once, then evaluate every method x granularity x K", formatter_class=fmt)
    p.add_argument("--model", help="model spec (default: the profile's models)")
    p.add_argument("--device", help="device (default: the profile's)")
    p.add_argument("--dtype", help="dtype (default: the profile's)")
    p.add_argument("--calibration", help="comma-separated calibration sources (default: the profile's)")
    p.add_argument("--samples", type=int, help="calibration windows (default: the profile's)")
    p.add_argument("--seqlen", type=int, help="tokens per calibration window (default: the profile's)")
    p.add_argument("--seed", type=int, help="seed of the window draw (default: the profile's)")
    p.add_argument("--methods", help="comma-separated: knn, bucket, renyi, cosine, angular (default: the profile's)")
    p.add_argument("--granularity", help="comma-separated: attn, mlp, layer (default: the profile's)")
    p.add_argument("--drops", help="comma-separated numbers of dropped blocks, e.g. 0,2,4,6,8 (default: the profile's)")
    p.add_argument("--protect", help="protected layers, see 'order --help' (default: the profile's: auto; "
                                     "paper: first:2,last:1)")
    _eval_args(p)
    p.add_argument("--out", default="results/sweep", help="output folder (one subfolder per model)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("speed", help="prefill/decode throughput and memory, dense vs pruned", formatter_class=fmt)
    _model_args(p)
    p.add_argument("--scores", required=True, help="scores file written by 'score'")
    p.add_argument("--method", default="knn", help="method whose drop order is measured")
    p.add_argument("--granularity", default="attn", help="comma-separated: attn, mlp, layer")
    p.add_argument("--protect", default="auto", help="protected layers (see 'order --help')")
    p.add_argument("--drops", default="0,2,4,6,8", help="comma-separated numbers of dropped blocks")
    p.add_argument("--prompt-len", type=int, default=256, help="prompt tokens (prefill)")
    p.add_argument("--new-tokens", type=int, default=32, help="generated tokens (decode)")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per batch")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--repeats", type=int, default=5, help="timed runs (median and spread reported)")
    p.add_argument("--out", default="speed.json", help="JSON results (a CSV is written beside it)")
    p.set_defaults(func=cmd_speed)

    p = sub.add_parser("reproduce", help="execute the figure notebooks (papermill), skipping unchanged ones",
                       formatter_class=fmt)
    p.add_argument("--profile", default="default", help="smoke, default or paper")
    _run_args(p)
    p.add_argument("--limit", type=int, help="examples per task, perplexity windows and timed speed repeats "
                                             "(default: the profile's; -1 for all)")
    p.add_argument("--no-plan", action="store_true", help="skip the plan and time estimate printed first")
    p.add_argument("--results", default="results", help="results folder (one subfolder per profile and model)")
    p.add_argument("--notebooks", default="notebooks", help="folder of the source notebooks")
    p.add_argument("--out", default="generated/notebooks", help="folder for the executed notebooks")
    p.add_argument("--book-figures", default="book/figures", help="copy executed notebooks here ('' for no copy)")
    p.add_argument("--only", help="comma-separated notebook names")
    p.add_argument("--force", action="store_true", help="execute even if nothing changed")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("plan", help="print what a profile computes and an estimate of how long it takes",
                       formatter_class=fmt)
    p.add_argument("--profile", default="paper", help="smoke, default or paper")
    _run_args(p)
    p.add_argument("--tasks", help="comma-separated tasks (default: the profile's)")
    p.add_argument("--limit", type=int, help="examples per task (default: the profile's; -1 for all)")
    p.add_argument("--model-config", help="a config.json, to estimate from FLOPs instead of measuring (with --tflops)")
    p.add_argument("--tflops", type=float, help="peak dense TFLOPS of the target device (A100: 312 in bf16/fp16); "
                                                "without it the loaded model is timed on this machine")
    p.add_argument("--mfu", type=float, default=0.45, help="assumed fraction of peak FLOPS reached")
    p.add_argument("--bandwidth", type=float, default=1555, help="memory bandwidth in GB/s (A100-40GB: 1555)")
    p.add_argument("--chars-per-token", type=float, default=4.0, help="token estimate with --model-config")
    p.set_defaults(func=cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors print one line on stderr and exit with code 2."""
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except CompanionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished results are kept and a rerun resumes", file=sys.stderr)
        return 130
