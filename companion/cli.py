"""``python -m companion``: score blocks, derive drop orders, prune, and inspect models."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import CompanionError
from .models import DEFAULT_MODEL

DESCRIPTION = """EntroDrop companion: entropy-based block pruning of decoder-only LLMs.

typical use:
  python -m companion score --model gemma-3-270m --data wikitext2 --out scores.json
  python -m companion order scores.json --method knn --granularity attn
  python -m companion prune --model gemma-3-270m --scores scores.json --method knn --granularity layer --drop 4 --out pruned/
"""


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"'{DEFAULT_MODEL}' (embedded default), a Hugging Face id, or a local folder")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")


def _order_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="knn", help="knn, bucket, renyi (entropy) or cosine, angular (similarity)")
    parser.add_argument("--granularity", default="attn", help="attn, mlp or layer")
    parser.add_argument("--protect", default="auto",
                        help="layers never dropped: auto (detected compression stage; none for similarity methods), "
                             "none, or e.g. first:2,last:1 (the paper's code) or 0,1,17")


def cmd_score(args: argparse.Namespace) -> int:
    from .data import load_documents, sample_windows
    from .io import atomic_write_json
    from .models import load_model
    from .scoring import ScoreSettings, read_scores, same_request, score

    settings = ScoreSettings(
        estimators=[e.strip() for e in args.estimators.split(",") if e.strip()],
        params={"knn": {"k": args.knn_k}, "bucket": {"bins": args.bucket_bins}, "renyi": {"alpha": args.renyi_alpha}},
        batch_size=args.batch_size,
    )
    settings.validate()
    request = {"samples": args.samples, "seqlen": args.seqlen, "seed": args.seed, "source": Path(args.data).stem}
    out = Path(args.out)
    if out.exists() and not args.force:
        existing = read_scores(out)
        if same_request(existing, args.model, request, settings):
            print(f"{out} already holds these scores (use --force to recompute)", file=sys.stderr)
            return 0
    loaded = load_model(args.model, args.device, args.dtype)
    docs = load_documents(args.data, args.split)
    windows = sample_windows(loaded.tokenizer, docs, args.samples, args.seqlen, args.seed)
    result = score(loaded, docs, windows, settings, progress=not args.quiet)
    atomic_write_json(out, result)
    print(f"wrote {out} ({result['num_layers']} layers, {len(result['blocks'])} block scores)", file=sys.stderr)
    return 0


def cmd_order(args: argparse.Namespace) -> int:
    from .pruning import drop_order
    from .scoring import read_scores

    order = drop_order(read_scores(args.scores), args.method, args.granularity, args.protect)
    if args.format == "rank":
        print(order.rank_string())
    elif args.format == "json":
        print(json.dumps(order.to_json(), indent=2))
    else:
        print(" ".join(map(str, order.order)))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from .models import load_model
    from .pruning import Pruning, apply_pruning, drop_order, save_pruned
    from .scoring import read_scores

    if args.layers is not None:
        layers = [int(v) for v in args.layers.split(",") if v.strip()]
        source = {"layers": "given on the command line"}
    else:
        if args.scores is None or args.drop is None:
            raise CompanionError("prune needs --scores and --drop (or explicit --layers)")
        order = drop_order(read_scores(args.scores), args.method, args.granularity, args.protect)
        layers = order.drop_set(args.drop)
        source = {"scores": str(Path(args.scores).resolve()), "order": order.to_json()}
    loaded = load_model(args.model, args.device, args.dtype)
    report = apply_pruning(loaded.model, Pruning(args.granularity, layers))
    save_pruned(loaded.model, loaded.tokenizer, args.out, {**report, "base_model": loaded.provenance(), **source})
    print(f"dropped {args.granularity} blocks {layers}; parameters {report['params_before']:,} -> "
          f"{report['params_after']:,}; saved to {args.out}", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .adapters import family_of, text_config
    from .models import load_model
    from .pruning import count_parameters

    loaded = load_model(args.model, args.device, args.dtype)
    config = text_config(loaded.model)
    pruning = getattr(loaded.model, "companion_pruning", None)
    info = {**loaded.provenance(), "family": family_of(loaded.model).name, "hidden_size": config.hidden_size,
            "parameters": count_parameters(loaded.model),
            "pruning": None if pruning is None else {"granularity": pruning.granularity, "layers": pruning.layers}}
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m companion", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("score", help="one pass over calibration data: entropy and similarity of every block",
                       formatter_class=fmt)
    _model_args(p)
    p.add_argument("--data", default="c4", help="wikitext2, c4, or a .txt/.jsonl/.json/.parquet file of documents")
    p.add_argument("--split", default=None, help="split of a named source (default: validation)")
    p.add_argument("--samples", type=int, default=128, help="number of calibration windows")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per window")
    p.add_argument("--seed", type=int, default=2024, help="seed of the window draw")
    p.add_argument("--estimators", default="knn,bucket,renyi,cosine,angular", help="comma-separated")
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
