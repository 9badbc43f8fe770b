"""Datasets for training, in AudioCraft's layout (jsonl manifests, a sidecar NAME.json per file).

    prepare.py        a user's audio folder + captions CSV -> sidecars and split manifests
    splits.py         how many items each split gets, and which (both datasets)
    synthesizer.py    a small deterministic music synthesizer (a ClipSpec -> a mono clip)
    synth_domains.py  the synthetic dataset's 'old' and 'new' domains, clip drawing, captions
    synth_dataset.py  the synthetic dataset on disk, and a folder of captioned tones
    layout.py         AudioCraft's layout as both generated datasets write it (clips, sidecars, manifests)
    score_domains.py  the demo's real music: Bach chorales (old), Irish dance tunes (new); scores/ ships them
    midi_file.py      standard MIDI files, written and read with the standard library
    midi_render.py    MIDI to audio with the fluidsynth command, bounded in time and bytes
    score_dataset.py  excerpts of the score set (or of a user's MIDI folder) rendered, on disk
    manifests.py      where a split's manifest is, its size, evaluation splits of unset size
    checks.py         the pre-flight check of every file the manifests name
"""
