"""The book's analysis: notebook runs, tables and statistics, verdicts, glued findings, figures, reproduce.

The statistics and figure modules import neither torch nor transformers.
"""
