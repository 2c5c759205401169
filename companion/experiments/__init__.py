"""The experiments: lm-eval tasks, FastHFLM, evaluation, sweeps over drop counts, speed."""
