"""`device: auto` and `autocast(_dtype): auto`: the run follows the machine it runs on.

Resolved once, in place, before AudioCraft's solver reads `cfg.device` (`train.main`, and
`solvers.get_solver` / `ExtendedMusicGenSolver` for configs that still hold `auto`):

- `device: auto`: `cuda` when `torch.cuda.is_available()`, else `cpu`.
- `autocast: auto`: on for CUDA, off on the CPU.
- `autocast_dtype: auto`: on CUDA, `bfloat16` where `torch.cuda.is_bf16_supported()`, else `float16`
  (the solver then adds a GradScaler); on the CPU, `bfloat16`.

A value the user (or a solver config) sets is kept as it is.
"""
import typing as tp

import omegaconf
import torch

AUTO = 'auto'
KEYS = ('device', 'autocast', 'autocast_dtype')


def is_auto(value: tp.Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def needs_resolution(cfg: omegaconf.DictConfig) -> bool:
    """Whether `cfg` still holds `auto` in `device`, `autocast` or `autocast_dtype`."""
    return any(is_auto(cfg.get(key)) for key in KEYS)


def resolve_device(cfg: omegaconf.DictConfig) -> str:
    """Replace `auto` in `cfg.device`, `cfg.autocast`, `cfg.autocast_dtype` in place.

    Returns the one-line startup message saying what was chosen and why, e.g.
    "device: cuda (auto: CUDA available), autocast bfloat16 (auto: bf16 supported)".
    """
    device = cfg.get('device')
    if is_auto(device):
        cuda = torch.cuda.is_available()
        device = 'cuda' if cuda else 'cpu'
        device_why = 'auto: CUDA available' if cuda else 'auto: no CUDA device'
    else:
        device_why = 'as configured'
    on_cuda = torch.device(str(device)).type == 'cuda'

    autocast = cfg.get('autocast')
    autocast_auto = is_auto(autocast)
    if autocast_auto:
        autocast = on_cuda
    dtype = cfg.get('autocast_dtype')
    dtype_why = ''
    if is_auto(dtype):
        if on_cuda and not torch.cuda.is_bf16_supported():
            dtype, dtype_why = 'float16', 'auto: no bf16 on this GPU, with a GradScaler'
        else:
            dtype, dtype_why = 'bfloat16', 'auto: bf16 supported' if on_cuda else 'auto'

    with omegaconf.open_dict(cfg):
        cfg.device = str(device)
        cfg.autocast = bool(autocast)
        cfg.autocast_dtype = str(dtype)

    message = f"device: {device} ({device_why}), "
    if not autocast:
        return message + "autocast off" + (" (auto: off on the CPU)" if autocast_auto else "")
    return message + f"autocast {dtype}" + (f" ({dtype_why})" if dtype_why else "")
