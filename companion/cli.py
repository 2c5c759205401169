"""``python -m companion``: parses the command line and delegates to :mod:`companion.pipeline`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from companion.errors import CompanionError
from companion.experiments import EVAL_BATCH_SIZE
from companion.hub import DATA_SOURCES
from companion.method import criteria
from companion.model.embedded import EMBEDDED_MODELS
from companion.model.loading import DEFAULT_MODEL
from companion.names import GRANULARITIES
from companion.pipeline.config import DEFAULT_PROFILE, PROFILES, csv_list, int_list, resolve

DESCRIPTION = """EntroDrop companion: entropy-based block pruning of decoder-only LLMs.

commands: score, order, prune, info (the method); eval, sweep, yardstick, speed, tasks (evaluation);
reproduce (the figure notebooks); plan (what a run computes, and a time estimate).

typical use:
  python -m companion score --model gemma-3-270m --data wikitext2 --out scores.json
  python -m companion order scores.json --method knn --granularity attn
  python -m companion prune --model gemma-3-270m --scores scores.json --method knn --granularity layer --drop 4 --out pruned/
  python -m companion sweep --model gemma-3-270m --methods knn,cosine --drops 0,2,4 --tasks piqa --limit 50
  python -m companion reproduce --profile default
"""
PROFILE_HELP = ", ".join(PROFILES)


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
    parser.add_argument("--method", default="knn", help=f"criterion: {criteria.help_text(criteria.scored())}")
    parser.add_argument("--granularity", default="attn", help=f"block granularity: {', '.join(GRANULARITIES)}")
    parser.add_argument("--protect", default="auto",
                        help="layers never dropped: auto (the compression stage detected on the KNN entropy "
                             "profile), none, or e.g. first:2,last:1 (the paper's code) or 0,1,17")


def _run_args(parser: argparse.ArgumentParser, default_profile: str | None, evaluation: bool = True,
              tasks: bool = True) -> None:
    """The flags that override fields of the run configuration (see companion.pipeline.config)."""
    none = "" if default_profile else "; without --profile: only what is stated, no tiers, baselines or extra K"
    parser.add_argument("--profile", default=default_profile, choices=list(PROFILES),
                        help=f"named settings for everything not stated: {PROFILE_HELP}"
                             + (f" (default: {default_profile})" if default_profile else
                                f" (default: the {DEFAULT_PROFILE} profile's plain settings{none})"))
    parser.add_argument("--model", help="a Hugging Face id, local folder or embedded model (default: the profile's)")
    parser.add_argument("--device", help="device (default: the profile's)")
    parser.add_argument("--dtype", help="dtype (default: the profile's)")
    parser.add_argument("--data-source", choices=DATA_SOURCES,
                        help="calibration and task data: the Hub when reachable (auto), the Hub, or COMPANION_DATA_DIR "
                             "(default: the profile's)")
    if not tasks:
        return
    parser.add_argument("--calibration", help="comma-separated calibration sets (default: the profile's; offline, "
                                              "the paper profile needs e.g. c4,wikitext2 instead of c4:train)")
    parser.add_argument("--tasks", help="comma-separated lm-eval task names, plus wikitext2_ppl (default: the profile's)")
    parser.add_argument("--limit", type=int, help="examples per task, perplexity windows and timed speed repeats, for "
                                                  "every evaluation of the run (default: the profile's; -1 for all)")
    if evaluation:
        parser.add_argument("--samples", type=int, help="calibration windows (default: the profile's)")
        parser.add_argument("--seqlen", type=int, help="tokens per calibration window (default: the profile's)")
        parser.add_argument("--seed", type=int, help="seed of the window draw (default: the profile's)")
        parser.add_argument("--methods", help=f"comma-separated criteria: {', '.join(criteria.scored())} "
                                              "(default: the profile's)")
        parser.add_argument("--granularity", help="comma-separated: attn, mlp, layer (default: the profile's)")
        parser.add_argument("--drops", help="comma-separated numbers of dropped blocks, e.g. 0,2,4 (default: the "
                                            "profile's)")
        parser.add_argument("--protect", help="protected layers, see 'order --help' (default: the profile's)")


def _config(args: argparse.Namespace):
    """The run configuration of the parsed flags: the one resolver, shared with the notebooks."""
    values = {name: getattr(args, name, None) for name in
              ("model", "device", "dtype", "data_source", "calibration", "tasks", "limit", "samples", "seqlen",
               "seed", "methods", "granularity", "drops", "protect")}
    values["granularities"] = values.pop("granularity")
    values["results_dir"] = getattr(args, "results", None)
    values["eval_batch_size"] = getattr(args, "batch_size", None)
    return resolve(args.profile, values)


def cmd_score(args: argparse.Namespace) -> int:
    from companion.method.scoring import ScoreSettings
    from companion.pipeline.commands import score_to_file

    estimators = csv_list(args.estimators)
    params = {"knn": {"k": args.knn_k}, "bucket": {"bins": args.bucket_bins}, "renyi": {"alpha": args.renyi_alpha}}
    settings = ScoreSettings(estimators=estimators, params=params, batch_size=args.batch_size, protect=args.protect)
    scores, reused = score_to_file(args.model, args.device, args.dtype, args.data, args.split, args.data_source,
                                   args.samples, args.seqlen, args.seed, settings, args.out, args.force,
                                   progress=not args.quiet)
    if reused:
        print(f"{args.out} already holds these scores (key {scores['key_sha256'][:12]}; --force recomputes)",
              file=sys.stderr)
    else:
        data = scores["data"]
        print(f"wrote {args.out} ({scores['num_layers']} layers, {len(scores['blocks'])} block scores; documents "
              f"{data['path']}, sha256 {data['sha256'][:12]})", file=sys.stderr)
    return 0


def cmd_order(args: argparse.Namespace) -> int:
    from companion.pipeline.commands import drop_order_of

    order = drop_order_of(args.scores, args.method, args.granularity, args.protect)
    if args.format == "rank":
        print(order.rank_string())
    elif args.format == "json":
        print(json.dumps(order.to_json(), indent=2))
    else:
        print(" ".join(map(str, order.order)))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from companion.pipeline.commands import chosen_pruning, prune_to_folder

    pruning, source = chosen_pruning(args.granularity, args.layers, args.scores, args.method, args.protect, args.drop)
    report = prune_to_folder(args.model, args.device, args.dtype, pruning, source, args.out)
    print(f"dropped {args.granularity} blocks {pruning.layers}; parameters {report['params_before']:,} -> "
          f"{report['params_after']:,}; saved to {args.out}", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from companion.pipeline.commands import describe

    print(json.dumps(describe(args.model, args.device, args.dtype), indent=2))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from companion.pipeline.commands import write_tasks

    folder, differences = write_tasks(args.out, csv_list(args.tasks))
    for task, note in sorted(differences.items()):
        print(f"{task}: {note}", file=sys.stderr)
    print(f"wrote task configs to {folder}; run them with: lm_eval --include_path {folder} --tasks piqa ...")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from companion.pipeline.commands import chosen_pruning, evaluate_model
    from companion.pipeline.run import evaluation_settings

    config = _config(args)
    settings = evaluation_settings(config, fast=not args.stock_lm, progress=not args.quiet)
    pruning = None
    if args.layers is not None or args.drop:
        pruning, _ = chosen_pruning(args.granularity, args.layers, args.scores, args.method, args.protect, args.drop)
    rows = evaluate_model(args.model or DEFAULT_MODEL, config.device, config.dtype, settings, pruning, args.out)
    for row in rows:
        stderr = "" if row["stderr"] is None else f" ± {row['stderr']:.4f}"
        print(f"{row['task']:>16} {row['metric']:>12} {row['value']:.4f}{stderr} (n={row['n']})")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from companion.pipeline.run import plan_text, sweep

    config = _config(args)
    print(plan_text(config, speed=False), file=sys.stderr)
    for path in sweep(config, progress=not args.quiet):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_yardstick(args: argparse.Namespace) -> int:
    from companion.pipeline.run import build_run, ensure_yardstick

    config = _config(args)
    for model in config.models:
        run = build_run(config.for_model(model), model)
        stored = ensure_yardstick(run)
        print(f"{run.out_dir / 'yardstick.csv'}: {len(stored['rows'])} blocks", file=sys.stderr)
        run.release()
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from companion.pipeline.commands import plan_from_model_config
    from companion.pipeline.run import plan_text

    config = _config(args)
    if args.tflops is None:  # measured on each model
        print(plan_text(config))
        return 0
    if not args.model_config:
        raise CompanionError("--tflops needs --model-config (the model's config.json)")
    print(plan_from_model_config(config, args.model_config, args.tflops, args.mfu, args.bandwidth,
                                 args.chars_per_token))
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    from companion.pipeline.commands import speed_to_file

    measure = {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batch_size": args.batch_size,
               "warmup": args.warmup, "repeats": args.repeats}
    rows = speed_to_file(args.model, args.device, args.dtype, args.scores, args.method, args.protect,
                         csv_list(args.granularity), int_list(args.drops), measure, args.out)
    for row in rows:
        print(f"{row['granularity']:>5} K={row['K']:<3} prefill {row['prefill_tps']:.1f} tok/s "
              f"(x{row['measured_speedup_prefill']:.2f}, FLOPs x{row['expected_speedup_prefill']:.2f})  "
              f"decode {row['decode_tps']:.1f} tok/s (x{row['measured_speedup_decode']:.2f}, "
              f"FLOPs x{row['expected_speedup_decode']:.2f})")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from companion.pipeline.notebooks import run_notebooks
    from companion.pipeline.run import PARAMETERS, ensure_results, from_parameters, plan_text

    config = _config(args)
    stated = {"model": args.model, "device": args.device, "dtype": args.dtype, "data_source": args.data_source,
              "calibration": args.calibration, "tasks": args.tasks, "limit": args.limit}
    parameters = {"profile": args.profile, "results_dir": args.results,
                  **{k: v for k, v in stated.items() if v is not None and k in PARAMETERS}}
    if not args.no_plan:
        print(plan_text(config), file=sys.stderr)
    if not args.only:  # every result first, so that the notebooks run once each
        ensure_results(from_parameters(parameters))
    executed = run_notebooks(Path(args.notebooks), Path(args.out), parameters, csv_list(args.only) or None,
                             Path(args.book_figures) if args.book_figures else None, args.force)
    print(f"executed {len(executed)} notebook(s): {', '.join(executed) or 'none (all up to date)'}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m companion", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = _DefaultsHelpFormatter

    p = sub.add_parser("score", help="score every block of a model on calibration data, with every criterion",
                       formatter_class=fmt)
    _model_args(p)
    p.add_argument("--data", default="c4", help="wikitext2, c4, or a .txt/.jsonl/.json/.parquet file of documents")
    p.add_argument("--split", default=None, help="split of a named source (default: validation)")
    p.add_argument("--data-source", choices=DATA_SOURCES, default="auto",
                   help="for wikitext2/c4: the Hugging Face Hub, the local copies under COMPANION_DATA_DIR, "
                        "or auto (the Hub when reachable, else local)")
    p.add_argument("--samples", type=int, default=128, help="number of calibration windows")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per calibration window")
    p.add_argument("--seed", type=int, default=2024, help="seed of the window draw")
    p.add_argument("--estimators", default=",".join(criteria.names(needs="hidden")),
                   help=f"comma-separated criteria, of {', '.join(criteria.scored())} (default: every criterion of "
                        "the one hooked pass, the diagnostics knn_unit and bucket_mm included)")
    p.add_argument("--knn-k", type=int, default=criteria.get("knn").params["k"], help="k of the KNN estimator")
    p.add_argument("--bucket-bins", type=int, default=criteria.get("bucket").params["bins"],
                   help="bins per dimension of the bucket estimator")
    p.add_argument("--renyi-alpha", type=float, default=criteria.get("renyi").params["alpha"],
                   help="order of the Renyi estimator")
    p.add_argument("--protect", default="first:2,last:1",
                   help="layers that criteria with passes of their own never remove (see 'order --help')")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward batch")
    p.add_argument("--out", default="scores.json", help="scores file to write")
    p.add_argument("--force", action="store_true", help="recompute even if --out already holds these scores")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("order", help="print the drop order of a criterion from a scores file", formatter_class=fmt)
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
    _run_args(p, None, evaluation=False)
    p.set_defaults(model=DEFAULT_MODEL)
    p.add_argument("--batch-size", type=int, help=f"lm-eval batch size: requests per forward pass "
                                                  f"(default: {EVAL_BATCH_SIZE})")
    p.add_argument("--stock-lm", action="store_true",
                   help="use lm-eval's stock HFLM instead of the faster, equivalent FastHFLM")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--scores", help="scores file, to prune by a drop order before evaluating")
    _order_args(p)
    p.add_argument("--drop", type=int, default=0, help="number of blocks to drop (with --scores)")
    p.add_argument("--layers", help="explicit comma-separated layers to drop instead of --scores/--drop")
    p.add_argument("--out", help="JSON file for the results (default: none written)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sweep", help="score once, then evaluate every criterion x granularity x K",
                       formatter_class=fmt)
    _run_args(p, None)
    p.add_argument("--batch-size", type=int, help=f"lm-eval batch size (default: {EVAL_BATCH_SIZE})")
    p.add_argument("--results", "--out", dest="results", help="results folder: <results>/<profile>/<model>/ "
                                                              "(default: results)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("yardstick", help="what removing each block alone costs on held-out text (NLL per token)",
                       formatter_class=fmt)
    _run_args(p, None, tasks=False)
    p.add_argument("--results", help="results folder: <results>/<profile>/<model>/yardstick.csv (default: results)")
    p.set_defaults(func=cmd_yardstick)

    p = sub.add_parser("speed", help="prefill/decode throughput and memory, dense vs pruned", formatter_class=fmt)
    _model_args(p)
    p.add_argument("--scores", required=True, help="scores file written by 'score'")
    p.add_argument("--method", default="knn", help="criterion whose drop order is measured")
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
    _run_args(p, DEFAULT_PROFILE, evaluation=False)
    p.add_argument("--no-plan", action="store_true", help="skip the plan and time estimate printed first")
    p.add_argument("--results", default="results", help="results folder (one subfolder per profile and model)")
    p.add_argument("--notebooks", default="notebooks", help="folder of the source notebooks")
    p.add_argument("--out", default="generated/notebooks", help="folder for the executed notebooks")
    p.add_argument("--book-figures", default="book/figures", help="copy executed notebooks here ('' for no copy)")
    p.add_argument("--only", help="comma-separated notebook names")
    p.add_argument("--force", action="store_true", help="execute even if nothing changed")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("plan", help="print what a run computes and an estimate of how long it takes",
                       formatter_class=fmt)
    _run_args(p, "paper")
    p.add_argument("--model-config", help="a config.json, to estimate from FLOPs instead of measuring (with --tflops)")
    p.add_argument("--tflops", type=float, help="peak dense TFLOPS of the target device (A100: 312 in bf16/fp16); "
                                                "without it the loaded model is timed on this machine")
    p.add_argument("--mfu", type=float, default=0.45, help="assumed fraction of peak FLOPS reached")
    p.add_argument("--bandwidth", type=float, default=1555, help="memory bandwidth in GB/s (A100-40GB: 1555)")
    p.add_argument("--chars-per-token", type=float, default=4.0, help="token estimate with --model-config")
    p.set_defaults(func=cmd_plan)
    return parser


class _LineFormatter(logging.Formatter):
    """``message`` for information, ``warning: message`` (``error: ...``) above it."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {text}"


def _quiet_libraries() -> None:
    """The companion reports through logging, one line per message; the libraries' chatter is off."""
    from transformers.utils import logging as hf_logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in ("lm_eval", "lm-eval", "datasets", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors print one line on stderr and exit with code 2."""
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except CompanionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished results are kept and a rerun resumes", file=sys.stderr)
        return 130
