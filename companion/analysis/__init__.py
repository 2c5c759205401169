"""The book's analysis: tables and statistics, paired comparisons, verdicts, glued findings, figures and the
figure list. It reads result files only and imports neither torch nor transformers (a test checks it).
"""
