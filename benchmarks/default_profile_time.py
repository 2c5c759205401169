"""Time the default profile's computation from nothing: for each model the scores and sweeps on every
calibration set and the yardstick, then the speed run, step by step, as the notebooks request them. Run
it from a clean checkout with no ``results/default`` (move it away first), then ``make reproduce`` for
the comparisons, the notebooks and the book:

    COMPANION_DATA_DIR=../shared/data python benchmarks/default_profile_time.py

SmolLM2-135M goes first: the issue's order of targets puts the primary comparison, SmolLM2's curves and
the yardstick before Gemma-3-270M's curves, so an interrupted run (rerun it: stored results are reused)
has the most important ones.
"""

import time

from companion import pipeline
from companion.pipeline.run import plan_text

start = time.time()
base = pipeline.from_parameters({"profile": "default", "results_dir": "results"})
print(plan_text(base.config), flush=True)
print(f"[{time.time() - start:7.0f} s] plan", flush=True)
for model in sorted(base.models, key=lambda m: m != "smollm2-135m"):
    run = base.for_model(model)
    print(f"{model}: drops {run.drops}, limit {run.limit}, primary {run.sweep_settings().primary_limit}", flush=True)
    for calibration in run.calibrations:
        pipeline.ensure_scores(run, calibration)
        print(f"[{time.time() - start:7.0f} s] {model} scores {calibration}", flush=True)
        pipeline.ensure_sweep(run, calibration)
        print(f"[{time.time() - start:7.0f} s] {model} sweep {calibration}", flush=True)
    pipeline.ensure_yardstick(run)
    print(f"[{time.time() - start:7.0f} s] {model} yardstick", flush=True)
    if model == base.model:
        pipeline.ensure_speed(run, pipeline.ensure_scores(run))
        print(f"[{time.time() - start:7.0f} s] {model} speed", flush=True)
    run.release()
print(f"total {time.time() - start:.0f} s", flush=True)
