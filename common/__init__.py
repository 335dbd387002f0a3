"""Shared code for the Neural Breakout pipeline (env, models, replay, datasets, metrics)."""
