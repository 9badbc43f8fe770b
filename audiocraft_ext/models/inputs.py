"""Checks on generation inputs, so bad input fails early with a message that says what to fix.

AudioCraft's own checks are bare `assert`s deep inside generation (or none: a NaN prompt
silently gives NaN codes); these run before any work is done.
"""
import math
import typing as tp

import torch


class GenerationInputError(ValueError, AssertionError):
    """A bad generation input that `MusicGen` itself rejects with a bare `assert`.

    A `ValueError` with a clear message, like every other bad-input error here, and also an
    `AssertionError`, so that code written against `MusicGen` that catches `AssertionError`
    (as AudioCraft's own tests do) behaves the same with `ExtendedMusicGen`.
    """


def check_duration(name: str, value: tp.Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} is not a positive number of seconds.")


def check_num_samples(num_samples: tp.Any) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
        raise ValueError(f"num_samples={num_samples!r}: give a positive number of samples to generate.")


def check_descriptions(descriptions: tp.Any, allow_none_items: bool = True) -> None:
    if isinstance(descriptions, str) or not isinstance(descriptions, (list, tuple)):
        raise TypeError(f"descriptions must be a list of strings, got {type(descriptions).__name__}: "
                        "wrap a single prompt in a list, e.g. ['calm piano'].")
    if not descriptions:
        raise ValueError("descriptions is empty: give at least one prompt "
                         "(use generate_unconditional(num_samples) for no text).")
    for index, description in enumerate(descriptions):
        if not isinstance(description, str) and not (allow_none_items and description is None):
            raise TypeError(f"descriptions[{index}] is {type(description).__name__}, expected a string.")


def check_waveform(name: str, wav: tp.Any, sample_rate: tp.Any, max_seconds: tp.Optional[float] = None,
                   list_item: bool = False, min_seconds: float = 0.0) -> None:
    """A waveform given as [C, T] or [B, C, T] (B > 0): floating point, finite, non-empty, at a
    positive sample rate.

    Args:
        max_seconds (float, optional): longest duration accepted (MusicGen asserts it for prompts).
        min_seconds (float): shortest duration accepted (a prompt: one frame of the codec).
        list_item (bool): one waveform of a list, which must be [C, T] (MusicGen asserts it).
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"{name} sample rate must be a positive int, got {sample_rate!r}.")
    if not isinstance(wav, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, C, T] or [C, T], got {type(wav).__name__}.")
    if list_item and wav.dim() != 2:
        raise GenerationInputError(f"{name} has shape {list(wav.shape)}; a list of waveforms holds [C, T] "
                                   "tensors (or pass one [B, C, T] tensor).")
    if wav.dim() not in (2, 3) or wav.shape[-1] == 0 or wav.shape[-2] not in (1, 2) or wav.shape[0] == 0:
        raise ValueError(f"{name} has shape {list(wav.shape)}; expected [B, C, T] or [C, T] with B > 0 items, "
                         "C = 1 or 2 channels and T > 0 samples.")
    if not wav.is_floating_point():
        raise TypeError(f"{name} has dtype {wav.dtype}; give floating-point samples in [-1, 1] (for 16-bit "
                        "integers: wav.float() / 32768).")
    if not torch.isfinite(wav).all():
        raise ValueError(f"{name} contains NaN or infinite samples: clean the waveform first.")
    seconds = wav.shape[-1] / sample_rate
    if seconds < min_seconds:
        raise ValueError(f"{name} lasts {seconds:.6f} s ({wav.shape[-1]} samples at {sample_rate} Hz), shorter "
                         f"than one frame of the model's codec ({min_seconds:.4f} s): give a longer prompt.")
    if max_seconds is not None and seconds > max_seconds:
        raise GenerationInputError(f"{name} lasts {seconds:.2f} s, longer than the {max_seconds:.2f} s to "
                                   "generate: trim it or raise duration with set_generation_params(duration=...).")


def check_sampling(params: tp.Dict[str, tp.Any], card: int) -> None:
    """The sampling settings of `set_generation_params` (those given): `use_sampling` and
    `two_step_cfg` booleans, `top_k` in [0, card] (0: off), `top_p` in [0, 1] (0: off),
    `temperature` > 0 and `cfg_coef` finite."""
    for name in ('use_sampling', 'two_step_cfg'):
        if name in params and not isinstance(params[name], bool):
            raise TypeError(f"{name}={params[name]!r}: use True or False.")
    if 'top_k' in params:
        top_k = params['top_k']
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= card:
            raise ValueError(f"top_k={top_k!r} is out of range: use an integer from 0 (off) to the codebook "
                             f"size, {card}.")
    for name, low, high, what in (('top_p', 0.0, 1.0, 'a probability from 0 (off) to 1'),
                                  ('temperature', 0.0, math.inf, 'a number above 0 (1.0: as trained)'),
                                  ('cfg_coef', -math.inf, math.inf, 'a finite number (3.0 is MusicGen\'s)')):
        if name not in params:
            continue
        value = params[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not low <= value <= high or (name == 'temperature' and value == 0):
            raise (ValueError if number else TypeError)(f"{name}={value!r}: use {what}.")
