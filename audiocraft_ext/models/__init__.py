"""Models: the extended LM, its MusicGen wrapper, checkpoints and tiny test models."""
