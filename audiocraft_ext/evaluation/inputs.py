"""`EvaluationInputs`: everything the evaluate stage reads, handed over by whoever runs it.

`ExtendedMusicGenSolver.evaluation_inputs` builds one inside its evaluate stage; the stage
(`report.run_evaluation`) reads nothing else, and never calls back into the solver.
"""
from dataclasses import dataclass
from pathlib import Path
import typing as tp

import omegaconf
import torch

# an audio batch (audio, infos) -> (condition_tensors, codes [B, K, T], padding_mask [B, K, T])
Prepare = tp.Callable[[tp.Any], tp.Tuple[dict, torch.Tensor, torch.Tensor]]


class HeldOutSet(tp.Protocol):
    """Batches of codes with their own `prepare` (e.g. the base's held-out generations) and a description."""
    description: str

    def __len__(self) -> int: ...

    def __iter__(self) -> tp.Iterator[tp.Any]: ...

    def prepare(self, batch: tp.Any) -> tp.Tuple[dict, torch.Tensor, torch.Tensor]: ...


@dataclass
class RunIdentity:
    """Which run and state the report describes."""
    folder: Path
    sig: str
    epoch: int  # the last trained epoch
    checkpoint: str
    base_reference: str
    base_hash: str
    history: tp.List[dict]  # flashy's per-epoch metrics, for the loss curves


@dataclass
class EvaluationInputs:
    """What the evaluate stage reads.

    Attributes:
        cfg: the run's config (`evaluate.*`, `extended_model.extension_scale`, `dataset.batch_size`,
            `generate.*`, `metrics.*`, `sample_rate`, ...).
        model: the `ExtendedLMModel` (best state in place), compression_model its codec, on `device`.
        loader: the evaluate split, batches of (audio [B, C, T], infos).
        reference_loader: a manifest -> a loader over it built like `loader`.
        held_out: a batch size -> the base's held-out generations (`HeldOutSet`), made on first use.
        prepare: tokenises an audio batch as training and validation do.
        generate_step: `MusicGenSolver.run_generate_step` (an audio batch -> {'gen_audio': [B, C, T], ...}).
        generation_params: the sampling settings of `generate.lm`.
        autocast: returns a new autocast context as the run uses.
        progress: flashy's `log_progress(stage name, loader, total=, updates=)` -> the loader, logging progress.
        out_dir: where the report goes.
        run: the run and state evaluated.
        logger: where to log.
    """
    cfg: omegaconf.DictConfig
    model: torch.nn.Module
    compression_model: torch.nn.Module
    device: tp.Any
    loader: tp.Iterable
    reference_loader: tp.Callable[[str], tp.Iterable]
    held_out: tp.Callable[[int], HeldOutSet]
    prepare: Prepare
    generate_step: tp.Callable[..., dict]
    generation_params: tp.Dict[str, tp.Any]
    autocast: tp.Callable[[], tp.ContextManager]
    progress: tp.Callable[..., tp.Iterable]

    def with_progress(self, name: str, loader: tp.Sized) -> tp.Iterable:
        """`loader`, its progress logged as stage `name` (every `logging.log_updates`)."""
        updates = int(self.cfg.get('logging', {}).get('log_updates', 10))
        return self.progress(name, loader, total=len(loader), updates=updates)
    out_dir: Path
    run: RunIdentity
    logger: tp.Any
