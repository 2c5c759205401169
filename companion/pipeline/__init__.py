"""Running the companion: the typed run configuration (:mod:`.config`), a model's run and its steps with
what is reused (:mod:`.run`), and the single actions behind the command line (:mod:`.commands`).

Notebooks call ``from_parameters(globals())`` and the ``ensure_*`` steps; the command line resolves its
flags with :func:`resolve` and calls the same steps.
"""

from companion.pipeline.config import PROFILES, RunConfig, additions, resolve
from companion.pipeline.run import (
    Run,
    build_run,
    comparisons_path,
    ensure_comparisons,
    ensure_examples,
    ensure_league,
    ensure_results,
    ensure_scores,
    ensure_speed,
    ensure_sweep,
    ensure_yardstick,
    from_parameters,
    model_runs,
)

__all__ = ["PROFILES", "Run", "RunConfig", "additions", "build_run", "comparisons_path", "ensure_comparisons",
           "ensure_examples", "ensure_league", "ensure_results", "ensure_scores", "ensure_speed", "ensure_sweep", "ensure_yardstick",
           "from_parameters", "model_runs", "resolve"]
