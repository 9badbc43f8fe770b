"""Import-only stand-in for spaCy on the GPU machine (benchmarks/gpu/run_gpu.sh installs it only
where spaCy is missing).

AudioCraft imports `spacy` at the top of `audiocraft/modules/conditioners.py` and uses it only in
the 'whitespace' text tokenizer; the models of the GPU run use the 'noop' one. The real wheels
(spacy 35 MB, blis 14 MB, thinc 4 MB) would not fit in what travels with the tree (64 MiB).
"""
from _stand_in import missing

IMPORT_ONLY_STAND_IN = True
__getattr__ = missing('spacy', "spaCy (the 'whitespace' text tokenizer)")
