"""`extension_scale`, the strength of the new layers' branches (0 = the base exactly, 1 = as
trained), and its one check. Free of torch, so the command line checks `--scale` before loading."""
import math
import typing as tp

MAX_EXTENSION_SCALE = 10.0  # past it the new layers' branches swamp the base's: logits overflow in generation


def check_extension_scale(scale: tp.Any, name: str = 'extension_scale') -> float:
    """Validate an `extension_scale`: a float in [0, MAX_EXTENSION_SCALE] (0 = base model, 1 = as trained).

    `name` is how the caller spells it in the error (`extended_model.extension_scale` in a config).
    """
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {scale!r}.") from None
    if isinstance(scale, bool) or not math.isfinite(value) or not 0 <= value <= MAX_EXTENSION_SCALE:
        raise ValueError(f"{name}={scale!r} is out of range: use a value from 0 to {MAX_EXTENSION_SCALE:g} "
                         "(0.0 gives the base model, 1.0 the extension as trained).")
    return value
