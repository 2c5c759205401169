"""Cost of one-pass scoring against a plain forward pass over the same calibration windows.

Each measurement runs in its own child process (so peak memory is that configuration's alone):
``forward`` is ``model(input_ids)`` (the full causal LM, logits included), ``backbone`` is the decoder
stack alone, and ``score`` is ``companion.method.scoring.collect`` with all five estimators on all three
granularities (it runs the backbone plus the estimators). Time is the median over repeats after a
warm-up batch; memory is the peak RSS of the child on CPU, or ``torch.cuda.max_memory_allocated`` on
CUDA. The last line is ``time_ratio=<score/forward> memory_ratio=<score/forward>``.

    python benchmarks/scoring.py --samples 32 --seqlen 256 --device cpu

``--random-shape llama-3.1-8b`` instead builds a randomly initialised model of that shape on the device
and scores random token windows: the numbers are meaningless, the time and memory are real (this is how
a GPU without Hub access checks that an 8B model with 128 x 256 windows scores on one GPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

SHAPES = {
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                         rope_theta=500000.0),
}


def random_loaded(shape: str, device: str, dtype: str):
    """A randomly initialised Llama of a known shape, built directly on ``device``."""
    import transformers

    from companion.model.loading import LoadedModel, resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch_device:
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPES[shape])).eval()
    finally:
        torch.set_default_dtype(default)
    return LoadedModel(model, None, f"random:{shape}", "random", "random", torch_device, torch_dtype)


def load(args: argparse.Namespace):
    """The model and calibration windows a run measures."""
    from companion.method.calibration import Windows, load_documents, sample_windows
    from companion.model.loading import load_model

    if args.random_shape:
        loaded = random_loaded(args.random_shape, args.device, args.dtype)
        generator = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(0, loaded.model.config.vocab_size, (args.samples, args.seqlen), generator=generator)
        return loaded, Windows(ids, [0] * args.samples, [0] * args.samples, args.seed)
    loaded = load_model(args.model, args.device, args.dtype)
    return loaded, sample_windows(loaded.tokenizer, load_documents(args.data), args.samples, args.seqlen, args.seed)


def worker(args: argparse.Namespace) -> dict:
    from companion.method.scoring import ScoreSettings, collect
    from companion.model import layouts

    loaded, windows = load(args)
    device = next(loaded.model.parameters()).device
    settings = ScoreSettings(batch_size=args.batch_size)

    def forward(module) -> None:
        with torch.inference_mode():
            for batch in torch.split(windows.input_ids, args.batch_size):
                module(input_ids=batch.to(device), use_cache=False)

    run = {"forward": lambda: forward(loaded.model),
           "backbone": lambda: forward(layouts.decoder(loaded.model)),
           "score": lambda: collect(loaded, windows, settings, progress=False)}[args.worker]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats + 1):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"seconds": statistics.median(times[1:]), "all_seconds": times[1:], "peak_bytes": peak,
            "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--data", default="wikitext2")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up run")
    parser.add_argument("--random-shape", choices=sorted(SHAPES), help="random weights of this shape, random tokens")
    parser.add_argument("--worker", choices=["forward", "backbone", "score"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results = {}
    for name in ("forward", "backbone", "score"):
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", name],
                               capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"{name} run failed: {(child.stderr.strip().splitlines() or ['no output'])[-1]}")
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{name:>8}: {results[name]['seconds']:.2f} s (runs {[round(t, 2) for t in results[name]['all_seconds']]}), "
              f"peak memory {results[name]['peak_bytes'] / 2**20:.0f} MiB on {results[name]['device']}")
    score, forward, backbone = results["score"], results["forward"], results["backbone"]
    print(f"against the backbone alone: time_ratio={score['seconds'] / backbone['seconds']:.3f} "
          f"memory_ratio={score['peak_bytes'] / backbone['peak_bytes']:.3f}")
    print(f"time_ratio={score['seconds'] / forward['seconds']:.3f} "
          f"memory_ratio={score['peak_bytes'] / forward['peak_bytes']:.3f}")


if __name__ == "__main__":
    main()
