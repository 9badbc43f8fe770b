"""A run's memory plan (`models.memory_plan`), logged at startup and checked before any data loads.

The plan is made from the loaded base's own shapes and the run's config; the extension's
predicted peak is compared with what the device has: on CUDA `torch.cuda.mem_get_info`'s free
memory plus what this process already holds (the base), on the CPU the kernel's MemAvailable plus
the base's bytes; `memory_plan.available_gb` replaces that figure. A step that cannot fit stops the
run with `MemoryPlanError`, naming the settings that would fit; `memory_plan.check=false` skips it.
"""
from dataclasses import replace
from pathlib import Path
import typing as tp

import flashy
import torch

from ..models.memory_plan import (GIB, HEADROOM, MemoryPlanError, Plan, Settings, extension_step, format_plan,
                                  largest_batch, make_plan, shape_of_musicgen, size_text)


def settings_of(cfg: tp.Any) -> Settings:
    """The plan's settings from a solver config (`dataset.batch_size` already per rank)."""
    extended = cfg.extended_model
    overrides = extended.get('layer_overrides') or {}
    replay = cfg.get('replay') or {}
    return Settings(new_layers=int(extended.num_additional_layers), batch_size=int(cfg.dataset.batch_size),
                    segment=float(cfg.dataset.segment_duration),
                    precision=str(cfg.autocast_dtype) if cfg.autocast else 'float32',
                    replay_ratio=float(replay.get('ratio') or 0.0),
                    feature_cache=bool((cfg.get('feature_cache') or {}).get('path')),
                    replay_feature_cache=bool(replay.get('feature_cache', True)) and not replay.get('manifest'),
                    replay_from_audio=bool(replay.get('manifest')),
                    half_base=str(extended.get('base_dtype')) == 'float16',
                    checkpointing=overrides.get('checkpointing', 'none') not in ('none', None),
                    foreach=torch.device(str(cfg.device)).type == 'cuda')


def _tensor_bytes(modules: tp.Iterable[torch.nn.Module]) -> int:
    return sum(t.nbytes for module in modules for t in list(module.parameters()) + list(module.buffers()))


def available_memory(device: str, base: tp.Any) -> tp.Tuple[tp.Optional[float], str]:
    """(bytes the run may count on, how they were found); None when the device does not say."""
    held_by = [base.lm, base.compression_model] + [c.t5 for c in base.lm.condition_provider.conditioners.values()
                                                   if getattr(c, 't5', None) is not None]
    if torch.device(device).type == 'cuda':
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        held = torch.cuda.memory_allocated(torch.device(device))
        return free + held, f"{device}: torch.cuda.mem_get_info's free memory + the {size_text(held)} this process holds"
    try:
        lines = Path('/proc/meminfo').read_text().splitlines()
        kib = next(int(line.split()[1]) for line in lines if line.startswith('MemAvailable:'))
    except (OSError, StopIteration, ValueError):
        return None, 'the CPU: /proc/meminfo has no MemAvailable'
    held = _tensor_bytes(held_by)
    return kib * 1024 + held, f"the CPU: MemAvailable + the {size_text(held)} of the loaded base"


def plan_run(cfg: tp.Any, base: tp.Any, reference: str) -> tp.Tuple[Plan, tp.Optional[float], str]:
    """(the run's plan, the budget in bytes or None, where the budget comes from)."""
    shape = shape_of_musicgen(reference, base.lm, base.compression_model, source='loaded')
    settings = settings_of(cfg)
    stated = (cfg.get('memory_plan') or {}).get('available_gb')
    if stated is not None:
        available, how = float(stated) * GIB, f"memory_plan.available_gb={stated}"
    else:
        available, how = available_memory(str(cfg.device), base)
    budget = None if available is None else HEADROOM * available
    if budget is not None:
        how = f"{100 * HEADROOM:.0f} % of {size_text(available)}, {how}"
    return make_plan(shape, settings, budget, budget_note=how), budget, how


def refusal(plan: Plan, budget: float, how: str) -> str:
    """What `MemoryPlanError` says: the need, the budget, and each setting that would fit."""
    shape, settings = plan.shape, plan.settings
    ranks = flashy.distrib.world_size()
    need = plan.extension.peak
    options = []
    batch = largest_batch(extension_step, shape, settings, budget)
    if batch:
        per_rank = f" ({batch} per rank)" if ranks > 1 else ''
        options.append(f"dataset.batch_size={batch * ranks}{per_rank}, the largest batch that fits")
    else:
        options.append("not even one example per step fits as configured: lower the settings below, or use a "
                       "device with more memory")
    for label, changes in (("extended_model.base_dtype=float16", dict(half_base=True)),
                           ("'+extended_model.layer_overrides.checkpointing=torch'", dict(checkpointing=True)),
                           ("both", dict(half_base=True, checkpointing=True)),
                           (f"dataset.segment_duration={settings.segment / 2:g}", dict(segment=settings.segment / 2)),
                           ("replay.ratio=0", dict(replay_ratio=0.0))):
        changed = replace(settings, **changes)
        if changed == settings:
            continue
        peak = extension_step(shape, changed).peak
        options.append(f"{label} ({size_text(peak)}{', fits' if peak <= budget else ''})")
    return (f"The training plan does not fit: one step needs {size_text(need)} at its peak ({plan.extension.peak_phase}, "
            f"predicted for batch {settings.batch_size} x {settings.segment:g} s, {settings.new_layers} new layers) and "
            f"{size_text(budget)} are usable ({how}). Change: {'; '.join(options)}; or set memory_plan.check=false "
            "to start anyway. "
            "The whole plan is in the log above; audiocraft-ext plan prints it before a run.")


def check_memory_plan(cfg: tp.Any, base: tp.Any, reference: str, logger: tp.Any) -> tp.Optional[Plan]:
    """Log the run's plan and raise `MemoryPlanError` when its step cannot fit (`memory_plan.check`)."""
    if not (cfg.get('memory_plan') or {}).get('check', True):
        return None
    if cfg.dataset.get('segment_duration') is None:
        logger.info("No memory plan: dataset.segment_duration is not set (whole files, of unknown length).")
        return None
    try:
        plan, budget, how = plan_run(cfg, base, reference)
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # a base the plan cannot read: no plan
        logger.warning("No memory plan for this base (%s: %s); training goes on unchecked.", type(error).__name__, error)
        return None
    logger.info("%s", format_plan(plan))
    if budget is not None and plan.extension.peak > budget:
        raise MemoryPlanError(refusal(plan, budget, how))
    return plan
