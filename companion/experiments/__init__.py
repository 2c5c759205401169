"""Evaluation of dense and pruned models: lm-eval tasks, FastHFLM, sweeps, speed and plans."""

# lm-eval batch size (requests per forward pass) unless set: FastHFLM was fastest at 16 of 8/16/32 on a
# 2-core CPU, where stock HFLM is as fast at 8 as at 16 (benchmarks/README.md).
EVAL_BATCH_SIZE = 16
