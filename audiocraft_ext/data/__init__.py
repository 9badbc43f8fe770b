"""Datasets for training, in AudioCraft's layout (jsonl manifests, a sidecar NAME.json per file).

    prepare.py        a user's audio folder + captions CSV -> sidecars and split manifests
    splits.py         how many items each split gets, and which (both datasets)
    synthesizer.py    a small deterministic music synthesizer (a ClipSpec -> a mono clip)
    synth_domains.py  the synthetic dataset's 'old' and 'new' domains, clip drawing, captions
    synth_dataset.py  the synthetic dataset on disk, and a folder of captioned tones
    manifests.py      where a split's manifest is, its size, evaluation splits of unset size
    checks.py         the pre-flight check of every file the manifests name
"""
