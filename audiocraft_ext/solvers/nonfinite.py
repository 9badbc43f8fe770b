"""A NaN or infinite loss or gradient never reaches the optimizer, so it never reaches a checkpoint."""
import typing as tp

import flashy
import torch

class NonFiniteStepError(FloatingPointError):
    """The loss or the gradients of a training step are NaN or infinite; the step was not applied."""


def nonfinite_message(what: str, epoch: int, step: int) -> str:
    return (f"Non-finite {what} at epoch {epoch}, step {step}: the step was not applied, so the weights and "
            "the last checkpoint are unchanged. Lower optim.lr, keep optim.max_norm clipping on, use "
            "autocast_dtype=bfloat16 or autocast=false instead of float16, check the data; then rerun the "
            "same command to resume from the last checkpoint (or set skip_nonfinite_steps=N to skip up to N "
            "such steps per epoch).")


def gradients_finite(parameters: tp.Iterable[torch.nn.Parameter]) -> bool:
    flags = [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


def loss_finite(loss: torch.Tensor) -> bool:
    value = loss.detach()
    return bool(torch.isfinite(value).all()) if value.numel() else True


def all_ranks_agree_finite(finite: bool) -> bool:
    """False if any rank saw a non-finite value (every rank must skip the same steps)."""
    if flashy.distrib.world_size() == 1:
        return finite
    return flashy.distrib.average_metrics({'bad': 0.0 if finite else 1.0})['bad'] == 0.0
