"""Training engine: tasks, trainer, optimiser groups and schedules, checkpoints, distributed helpers."""
