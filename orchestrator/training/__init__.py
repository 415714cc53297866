"""MoSS fine-tuning on Ray Train: the per-worker loop, the driver that launches it, checkpoints, metrics."""
