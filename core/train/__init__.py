"""The training run: setup, one step, validation, checkpoints, the output directory, logs, signals, ranks."""
