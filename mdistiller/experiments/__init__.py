"""Experiments over many runs: sweeps (wandb files run offline), result reports, published numbers."""
