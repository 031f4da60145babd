"""Orchestration: the method registry, the denoiser pair, the trainer loop, parallelism,
checkpoints, evaluation.
"""
