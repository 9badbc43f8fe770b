"""Datasets for training: AudioCraft manifests with sidecar metadata, and a synthetic dataset."""
