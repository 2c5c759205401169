"""The method: calibration windows, entropy and similarity estimators, one-pass scoring, drop orders."""
