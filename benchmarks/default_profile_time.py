"""Time the default profile's computation from nothing: scores, sweeps (both models, both calibration
sets) and the speed run, step by step, as the notebooks request them. Run it from a clean checkout with
no ``results/default`` (move it away first), then ``make reproduce`` for the notebooks and the book:

    COMPANION_DATA_DIR=../shared/data python benchmarks/default_profile_time.py
"""

import time

from companion import pipeline

start = time.time()
base = pipeline.from_parameters({"profile": "default", "results_dir": "results"})
for model in base.models:
    run = base.for_model(model)
    print(f"{model}: drops {run.drops}, limit {run.limit}, primary {run.sweep_settings().primary_limit}", flush=True)
    for calibration in run.calibrations:
        pipeline.ensure_scores(run, calibration)
        print(f"[{time.time() - start:7.0f} s] {model} scores {calibration}", flush=True)
        pipeline.ensure_sweep(run, calibration)
        print(f"[{time.time() - start:7.0f} s] {model} sweep {calibration}", flush=True)
    if model == base.model:
        pipeline.ensure_speed(run, pipeline.ensure_scores(run))
        print(f"[{time.time() - start:7.0f} s] {model} speed", flush=True)
print(f"total {time.time() - start:.0f} s", flush=True)
