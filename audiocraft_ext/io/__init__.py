"""The leaf layer: file formats, base references, hashes and atomic writes.

Nothing here imports another part of audiocraft_ext; every other layer may import it
(the layer contract is in pyproject.toml, checked by import-linter).
"""
