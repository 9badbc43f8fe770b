"""Solver settings that would fail after hours of training, refused before the first step."""
import typing as tp

# Loudness (ITU-R BS.1770, torchaudio's `Loudness`) is measured over 400 ms blocks: shorter audio fails.
LOUDNESS_MIN_SECONDS = 0.4


def check_generate_durations(cfg: tp.Any) -> None:
    """The generate stage's clips are long enough for `generate.audio.strategy=loudness`.

    AudioCraft's sample manager normalises every clip it writes (the prompt, a quarter of the
    generate segment by default, and the generation) and fails on clips under 0.4 s after the
    epoch's training, before its checkpoint; this refuses such a config before training instead.
    """
    if cfg.generate.audio.get('strategy') != 'loudness':
        return
    split = cfg.dataset.get('generate') or {}
    segment = split.get('segment_duration', cfg.dataset.get('segment_duration'))
    if segment is None:
        return
    lm = cfg.generate.lm
    clips = {'generate.lm.gen_duration': lm.get('gen_duration') or segment}
    if lm.get('prompted_samples', True):
        clips['generate.lm.prompt_duration'] = lm.get('prompt_duration') or segment / 4
    for key, seconds in clips.items():
        if float(seconds) < LOUDNESS_MIN_SECONDS:
            raise ValueError(
                f"{key} is {float(seconds):g} s (the generate split's segments are {segment} s), shorter than the "
                f"{LOUDNESS_MIN_SECONDS} s that generate.audio.strategy=loudness needs to measure loudness: "
                "AudioCraft's generate stage would fail after the epoch's training. Set "
                f"dataset.segment_duration={4 * LOUDNESS_MIN_SECONDS:g} or more, {key}={LOUDNESS_MIN_SECONDS} or more, "
                "or generate.audio.strategy=peak.")
