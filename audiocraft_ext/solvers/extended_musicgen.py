"""ExtendedMusicGenSolver: AudioCraft's MusicGen solver, training only new layers on a frozen base.

Everything `MusicGenSolver` does is kept (CFG and attribute dropout, codebook patterns, cross
entropy and perplexity per codebook, autocast, the compression-token cache, the generate and
evaluate stages, flashy logging); what changes:

- `build_model`: the base comes from `pretrained_model_checkpoint` (its compression model too),
  is frozen and wrapped by `ExtendedLMModel` with `extended_model.*`; the optimizer, EMA,
  gradient clipping and LR schedule only ever see the new layers.
- the `model` entry of the solver state (checkpoints, best state, EMA swaps) is the
  extension's state dict; `base_model` records the base's reference and hash instead of its
  weights, so checkpoints grow with N, not with the base.
- checkpoints hold only tensors and plain containers, so they load with torch's default
  `weights_only=True` (see `xp_checkpoints`).
- forgetting control (`replay.*`, `distill.*`, see `solvers.forgetting`): every training step also
  scores replay examples (the user's old data or the base's own generations) and adds their
  cross entropy and a KL divergence to the base's logits, taken from the same forward, through
  the `_compute_cross_entropy` hook; the logged `ce` stays the new domain's.
"""
import functools
import logging
from pathlib import Path
import random
import typing as tp

import flashy
import numpy as np
import omegaconf
import torch

from audiocraft.solvers import builders
from audiocraft.solvers.musicgen import MusicGenSolver
from audiocraft.utils.autocast import TorchAutocast
from audiocraft.utils.utils import get_dataset_from_loader

from ..data.checks import check_datasources, check_manifests
from ..data.manifests import EVALUATION_SPLITS, count_entries, manifest_file, visit_each_file_once
from ..evaluation.plots import plot_loss_curves
from ..evaluation.inputs import EvaluationInputs, RunIdentity
from ..evaluation.reference_sets import reference_loader
from ..evaluation.report import run_evaluation
from ..io.base_reference import SIG_PREFIX, SOLVER_CHECKPOINT_FORMAT, TINY_PREFIX, sig_checkpoint
from ..io.hashing import weights_hash
from ..io.solver_checkpoints import plain_state, read_solver_checkpoint
from ..models.audiocraft_internals import (DIVERGED_MESSAGE, check_on_continue, checkpoint_io,
                                           set_ema_source)
from ..models.extended_lm import ExtendedLMModel
from ..models.extended_musicgen import load_base
from ..models.extension_config import ExtensionConfig, checked
from . import sharding, xp_checkpoints
from .device import needs_resolution, resolve_device
from .config_checks import check_generate_durations
from .memory_check import check_memory_plan
from .nonfinite import NonFiniteStepError, all_ranks_agree_finite, gradients_finite, loss_finite, nonfinite_message
from .forgetting import ForgettingConfig, ForgettingControl, base_generations, build_forgetting_control, manifest_loader
from .run_lock import RunLock, remove_stale_temporaries, save_checkpoint_atomically

_MISSING_BASE = (
    "pretrained_model_checkpoint is required: the frozen MusicGen to extend. Set it on the command "
    "line, e.g. pretrained_model_checkpoint=facebook/musicgen-small (Hugging Face id), "
    "pretrained_model_checkpoint=/path/to/exported_dir (state_dict.bin + compression_state_dict.bin), "
    "pretrained_model_checkpoint=/path/to/checkpoint.th or pretrained_model_checkpoint=//sig/SIG.")


class ExtensionStateSource:
    """The `model` entry of the solver state: the new layers only (a flashy StateDictSource)."""
    def __init__(self, lm: ExtendedLMModel):
        self.lm = lm

    def state_dict(self) -> tp.Dict[str, torch.Tensor]:
        if sharding.is_sharded(self.lm):  # gathered on rank 0 (others: {}), as an unsharded run's
            return sharding.full_state_dict(self.lm)
        return self.lm.extension_state_dict()

    def load_state_dict(self, state: tp.Mapping[str, torch.Tensor]) -> None:
        # Checkpoints of other solvers are refused when read (`xp_checkpoints.load_checkpoint`).
        if sharding.is_sharded(self.lm):  # rank 0's full state broadcast, or a rank's EMA shard
            sharding.load_state_dict(self.lm, state, 'the checkpoint')
            return
        self.lm.load_extension_state_dict(state)


class BaseModelSource:
    """The `base_model` entry: where the frozen base comes from and its hash, checked on load."""
    def __init__(self, solver: 'ExtendedMusicGenSolver'):
        self.solver = solver

    def state_dict(self) -> tp.Dict[str, tp.Any]:
        return {'format': SOLVER_CHECKPOINT_FORMAT, 'reference': self.solver.base_reference,
                'hash': self.solver.base_hash, 'extension_config': self.solver.model.extension_config.to_dict()}

    def load_state_dict(self, state: tp.Mapping[str, tp.Any]) -> None:
        if state['hash'] != self.solver.base_hash:
            raise RuntimeError(
                f"The checkpoint's extension was trained on the base {state['reference']} (hash "
                f"{state['hash']}), but this run's base {self.solver.base_reference} has hash "
                f"{self.solver.base_hash}. Use the same pretrained_model_checkpoint, or a new dora.dir / "
                "signature to start a new run.")
        saved = state['extension_config']
        current = self.solver.model.extension_config.to_dict()
        for key in ('num_additional_layers', 'layer_config'):
            if saved[key] != current[key]:
                raise RuntimeError(f"The checkpoint's extension has {key}={saved[key]!r} but this run builds "
                                   f"{current[key]!r}: set extended_model.* as in the checkpoint's run.")


class ExtendedMusicGenSolver(MusicGenSolver):
    """MusicGen solver that trains `extended_model.num_additional_layers` new layers on a frozen base.

    Config keys on top of the MusicGen solver's (see configs/solver/extended_musicgen.yaml):
        pretrained_model_checkpoint (str): the base (Hugging Face id, exported directory,
            AudioCraft `checkpoint.th`, `ExtendedMusicGen.save` file, `//sig/SIG` of a previous
            extended run to keep extending it, `//tiny/FLAVOUR` for debugging).
        extended_model.num_additional_layers (int), extended_model.extension_scale (float),
        extended_model.layer_overrides (dict): see `ExtendedLMModel`.
        sample_rate, channels: null to take the base's, or checked against it.
        classifier_free_guidance.training_dropout, .inference_coef: null to keep the base's.
        replay.*, distill.*: forgetting control (see `solvers.forgetting`, docs/TRAINING.md).
        memory_plan.check, memory_plan.available_gb: the step's memory plan, logged and checked
            before any data loads (see `solvers.memory_check`).
    """
    def __init__(self, cfg: omegaconf.DictConfig):
        self._base = None
        self.base_reference: str = ''
        self.base_hash: str = ''
        self.forgetting: tp.Optional[ForgettingControl] = None
        self._forgetting_metrics: tp.Dict[str, torch.Tensor] = {}
        self._epoch_seed = int(cfg.seed)
        if needs_resolution(cfg):  # `device: auto` before MusicGenSolver reads cfg.device
            logging.getLogger(__name__).info(resolve_device(cfg))
        self.forgetting_config = ForgettingConfig.from_cfg(cfg)
        sharding.check_fsdp_config(cfg)  # fsdp.* refused before any data or model is loaded
        if cfg.cache.path and not cfg.cache.write:
            raise NotImplementedError(
                "Training from a token cache (cache.path without cache.write) does not work with AudioCraft "
                "1.3.0: its CachedBatchLoader asserts that every cached field is a tensor, but MusicGenSolver "
                "caches MusicInfo objects (audiocraft/utils/cache.py, _load_one), so stock MusicGen training "
                "fails the same way. Train without cache.path; writing a cache (cache.write=true) works.")
        super().__init__(cfg)

    # ---- base model -------------------------------------------------------------------------
    def _resolve_reference(self, reference: str) -> str:
        """Absolute path for local files (Hydra changes the working directory), as is otherwise."""
        if reference.startswith(SIG_PREFIX):
            return str(sig_checkpoint(reference, self.xp.dora.dir))
        if reference.startswith(TINY_PREFIX):
            return reference
        from dora import git_save
        candidate = Path(git_save.to_absolute_path(str(Path(reference).expanduser())))
        return str(candidate.resolve()) if candidate.exists() else reference

    def _load_base(self):
        """Load the frozen base once, and fill `sample_rate`/`channels` from it (before datasets)."""
        if self._base is not None:
            return self._base
        reference = self.cfg.get('pretrained_model_checkpoint')
        if not reference:
            raise ValueError(_MISSING_BASE)
        self.base_reference = self._resolve_reference(str(reference))
        self.logger.info("Loading the frozen base from %s", self.base_reference)
        base, self.base_reference = load_base(self.base_reference, device=self.device, dora_dir=self.xp.dora.dir,
                                              allow_pickle=bool(self.cfg.get('allow_pickle', False)))
        base.lm.to(device=self.device, dtype=getattr(torch, self.cfg.dtype))
        self.base_hash = weights_hash(base.lm.state_dict())
        self.logger.info("Base hash: %s", self.base_hash)
        channels = base.compression_model.channels
        for key, value in (('sample_rate', base.sample_rate), ('channels', channels)):
            if self.cfg.get(key) is None:
                self._set_cfg(key, value)
            elif self.cfg[key] != value:
                raise ValueError(f"{key}={self.cfg[key]} but the base {self.base_reference} has {key}={value}: "
                                 f"leave {key} unset (null) to use the base's.")
        self._base = base
        return base

    def _set_cfg(self, key: str, value: tp.Any) -> None:
        # Also on the Dora XP's config: the sample manager reads `xp.cfg.sample_rate`.
        configs = [self.cfg]
        if self.xp.cfg is not None and self.xp.cfg is not self.cfg:
            configs.append(self.xp.cfg)
        for cfg in configs:
            with omegaconf.open_dict(cfg):
                cfg[key] = value

    def build_dataloaders(self) -> None:
        base = self._load_base()
        if not self.cfg.get('execute_only'):  # the plan of a training step, checked before any data loads
            check_memory_plan(self.cfg, base, self.base_reference, self.logger)
        check_datasources(self.cfg)
        check_generate_durations(self.cfg)
        each_file_splits = self._size_unsized_splits()
        super().build_dataloaders()
        for split in each_file_splits:
            visit_each_file_once(get_dataset_from_loader(self.dataloaders[split]))
        checks = self.cfg.get('data_checks') or {}
        if checks.get('audio', True) or checks.get('captions', True):
            datasets = {split: get_dataset_from_loader(loader) for split, loader in self.dataloaders.items()}
            count = check_manifests(datasets, audio=checks.get('audio', True),
                                           captions=checks.get('captions', True) and
                                           self.DATASET_TYPE.name == 'MUSIC')
            self.logger.info("Data checks passed on %d audio files.", count)

    def _size_unsized_splits(self) -> tp.List[str]:
        """`dataset.SPLIT.num_samples: null` on valid/evaluate/generate: one segment of every file.

        Returns the splits so sized (see `data.manifests`); the others keep AudioCraft's sampling.
        """
        sized = []
        execute_only = self.cfg.get('execute_only')
        for split in EVALUATION_SPLITS:
            source = self.cfg.datasource.get(split)
            split_cfg = self.cfg.dataset.get(split) or {}
            segment = split_cfg.get('segment_duration', self.cfg.dataset.get('segment_duration'))
            if not isinstance(source, str) or (execute_only and split != execute_only) \
                    or split_cfg.get('num_samples') is not None or segment is None:
                continue
            count = count_entries(manifest_file(source))
            with omegaconf.open_dict(self.cfg):
                self.cfg.dataset[split].num_samples = count
            self.logger.info("dataset.%s.num_samples is not set: one %s s segment of each of the %d files of %s.",
                             split, segment, count, source)
            sized.append(split)
        return sized

    def build_model(self) -> None:
        """Frozen base + new layers; optimizer, EMA and schedule over the new layers only."""
        base = self._load_base()
        self.compression_model = base.compression_model.to(self.device).eval()
        lm = base.lm
        guidance = self.cfg.classifier_free_guidance
        if guidance.get('training_dropout') is not None:
            lm.cfg_dropout.p = float(guidance.training_dropout)
        if guidance.get('inference_coef') is not None:
            lm.cfg_coef = float(guidance.inference_coef)
        with omegaconf.open_dict(self.cfg):  # what the generate stage records with each sample
            self.cfg.classifier_free_guidance.training_dropout = float(lm.cfg_dropout.p)
            self.cfg.classifier_free_guidance.inference_coef = float(lm.cfg_coef)
        if lm.n_q != self.compression_model.num_codebooks or lm.card != self.compression_model.cardinality:
            raise ValueError(f"The base LM models {lm.n_q} codebooks of {lm.card} tokens but its compression "
                             f"model has {self.compression_model.num_codebooks} of "
                             f"{self.compression_model.cardinality}.")
        extended = self.cfg.extended_model
        overrides = extended.get('layer_overrides')
        overrides = {} if overrides is None else omegaconf.OmegaConf.to_container(overrides, resolve=True)
        requested = checked('extended_model.', lambda: ExtensionConfig(
            extended.num_additional_layers, extended.extension_scale, overrides))
        try:
            self.model: ExtendedLMModel = ExtendedLMModel.from_config(lm, requested).to(self.device)
        except (TypeError, ValueError) as error:
            raise ValueError(f"extended_model.layer_overrides={overrides!r} do not fit the base "
                             f"{self.base_reference}: {error}") from None
        self._store_base(extended.get('base_dtype'))
        if self.cfg.fsdp.use:  # the new layers sharded across ranks (solvers.sharding); the base replicated
            sharding.wrap_extension(self.model, per_block=bool(self.cfg.fsdp.per_block))
            # MusicGenSolver.run_step clips with `self.model.clip_grad_norm_` when fsdp.use
            self.model.clip_grad_norm_ = functools.partial(sharding.clip_grad_norm_, self.model)
        trainable, total = self.model.parameter_counts()
        self.logger.info("Base: %d layers (frozen); new layers: %d; trainable params: %s of %s (%.2f%%)",
                         self.model.num_base_layers, self.model.num_additional_layers, f"{trainable:,}",
                         f"{total:,}", 100 * trainable / total)
        # EMA over the new layers only: its state swaps into the `model` entry below.
        set_ema_source(self, 'model', sharding.ema_source(self.model) if self.cfg.fsdp.use else
                       self.model.extension)
        self.optimizer = builders.get_optimizer(self.trainable_parameter_groups(), self.cfg.optim)
        # A NaN/inf loss or gradient stops the step before the optimizer changes any weight.
        self.optimizer.register_step_pre_hook(self._check_finite_step)
        self._step_loss: tp.Optional[torch.Tensor] = None
        self._step_index = 0
        self._skipped_steps = 0
        self.lr_scheduler = builders.get_lr_scheduler(self.optimizer, self.cfg.schedule, self.total_updates)
        self._use_feature_cache()
        self.stateful.register('model', ExtensionStateSource(self.model))
        self.stateful.register('base_model', BaseModelSource(self))
        if self.cfg.fsdp.use:  # gathered on rank 0: no checkpoint holds a DTensor
            self.stateful.register('optimizer', sharding.OptimizerState(self.model, self.optimizer))
            self.register_stateful('lr_scheduler')
        else:
            self.register_stateful('optimizer', 'lr_scheduler')
        self.register_best_state('model')
        # `base_model` is checked when continuing from another run's best state as well.
        check_on_continue(self, 'base_model')
        self.autocast_dtype = {'float16': torch.float16, 'bfloat16': torch.bfloat16}[self.cfg.autocast_dtype]
        self.scaler: tp.Optional[torch.amp.GradScaler] = None
        if self.cfg.autocast and self.autocast_dtype is torch.float16:
            # On the solver's device (AudioCraft's is CUDA-only), so the CPU runs the GPU's path too.
            self.scaler = torch.amp.GradScaler(torch.device(self.device).type)
            self.register_stateful('scaler')
        self._build_forgetting_control()

    def _autocast_factory(self) -> tp.Callable[[], TorchAutocast]:
        """A new autocast context as `self.autocast` gives, without the solver."""
        return functools.partial(TorchAutocast, enabled=self.cfg.autocast, device_type=self.device,
                                 dtype=self.autocast_dtype)

    def _build_forgetting_control(self) -> None:
        """`replay.*` / `distill.*`: the base's generations (made on first use) and the control, or None."""
        config = self.forgetting_config
        self.base_generations = base_generations(config, self.model, self.base_hash, int(self.cfg.sample_rate),
                                                 self.compression_model.frame_rate, self._autocast_factory(),
                                                 self.logger.info)
        self.forgetting = build_forgetting_control(
            config, self.model, self.base_generations,
            loader=lambda size: manifest_loader(self.cfg, str(config.manifest), size, self.DATASET_TYPE),
            prepare=self._prepare_tokens_and_attributes, cross_entropy=self._musicgen_cross_entropy,
            batch_size=int(self.cfg.dataset.batch_size), seed=int(self.cfg.seed), log=self.logger.info)

    def _store_base(self, dtype: tp.Optional[str]) -> None:
        """`extended_model.base_dtype`: the dtype the frozen base transformer is stored in (null: `dtype`)."""
        if dtype is None:
            return
        try:
            self.model.store_base_in(str(dtype))
        except ValueError as error:
            raise ValueError(f"extended_model.base_dtype={dtype}: {error}") from None
        stored = sum(param.nbytes for param in self.model.base_transformer.parameters())
        self.logger.info("Frozen base transformer stored in %s: %.1f MiB", dtype, stored / 2 ** 20)

    def _use_feature_cache(self) -> None:
        """`feature_cache.path`: replay the frozen base's outputs from disk (`models.feature_cache`)."""
        cache_cfg = self.cfg.get('feature_cache') or {}
        if not cache_cfg.get('path'):
            return
        from dora import git_save
        root = git_save.to_absolute_path(str(Path(str(cache_cfg.path)).expanduser()))
        max_gb = cache_cfg.get('max_gb')
        cache = self.model.use_feature_cache(root, None if max_gb is None else int(float(max_gb) * 2 ** 30))
        # The base's output is in the residual stream's dtype: the embeddings', whatever the base is stored in.
        bytes_per_token = self.model.dim * self.model.emb[0].weight.element_size()
        self.logger.info("Feature cache of the frozen base: %s (%d bytes per token)", cache.folder,
                         bytes_per_token)

    def trainable_parameter_groups(self) -> tp.List[dict]:
        """AudioCraft's parameter groups (`make_optim_group`), keeping only trainable parameters.

        `get_optim_parameter_groups` walks every module, frozen ones included (e.g. the base LM's
        own group); an optimizer must never hold a frozen parameter (weight decay would still
        change it), so those are filtered out and empty groups dropped.
        """
        groups = []
        for group in builders.get_optim_parameter_groups(self.model):
            params = [param for param in group['params'] if param.requires_grad]
            if params:
                groups.append({**group, 'params': params})
        assert sum(p.numel() for g in groups for p in g['params']) == self.model.parameter_counts()[0]
        return groups

    # ---- reliability: run lock, reproducible resume, non-finite steps -----------------------
    def run(self):
        """AudioCraft's training loop, holding the XP folder's lock (one run per signature)."""
        lock = RunLock(self.folder) if flashy.distrib.is_rank_zero() else None
        if lock is not None:
            lock.acquire()
        try:
            if lock is not None:
                remove_stale_temporaries(self.folder)
            return super().run()
        finally:
            if lock is not None:
                lock.release()

    def run_epoch(self):
        # Seed every RNG from (seed, epoch): a run resumed from a checkpoint draws the same
        # dropout masks and data as an uninterrupted one (AudioCraft does not save RNG states).
        # That includes the private generators of AudioCraft's condition dropouts (`rng`).
        seed = (int(self.cfg.seed) * 1_000_003 + self.epoch) % 2 ** 32
        self._epoch_seed = seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        for index, module in enumerate(self.model.modules()):
            if isinstance(getattr(module, 'rng', None), torch.Generator):
                module.rng.manual_seed(seed + 1 + index)
        super().run_epoch()

    def train(self):
        self._skipped_steps = 0
        if self.forgetting is not None:  # replay draws are a function of (seed, epoch) too, the same on
            self.forgetting.source.reseed(self._epoch_seed + 7919)  # every rank (each keeps its share)
        return super().train()

    def _compute_cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor,
                               mask: torch.Tensor) -> tp.Tuple[torch.Tensor, tp.List[torch.Tensor]]:
        """MusicGen's cross entropy; in training, plus the forgetting control's replay terms.

        `MusicGenSolver.run_step` back-propagates what this returns, so in training it returns the
        step's loss; `_run_training_step` logs the new domain's `ce` and the terms apart.
        """
        ce, ce_per_codebook = super()._compute_cross_entropy(logits, targets, mask)
        if not self.is_training:
            return ce, ce_per_codebook
        loss = ce
        if self.forgetting is not None:
            extra, parts = self.forgetting.loss(targets.shape[0], self.device)
            loss = ce + extra
            self._forgetting_metrics = {'ce': ce.detach(), 'loss': loss.detach(), **parts}
        self._step_loss = loss
        return loss, ce_per_codebook

    def _musicgen_cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor,
                                mask: torch.Tensor) -> tp.Tuple[torch.Tensor, tp.List[torch.Tensor]]:
        return MusicGenSolver._compute_cross_entropy(self, logits, targets, mask)

    def _check_finite_step(self, optimizer: tp.Any, args: tp.Any, kwargs: tp.Any) -> None:
        """Optimizer pre-step hook: refuse the step if the loss or a gradient is NaN or infinite."""
        loss_ok = self._step_loss is None or loss_finite(self._step_loss)
        grads_ok = gradients_finite(self.model.trainable_parameters())
        if not all_ranks_agree_finite(loss_ok and grads_ok):
            what = 'loss' if not loss_ok else 'gradients' if not grads_ok else 'loss or gradients on another rank'
            raise NonFiniteStepError(nonfinite_message(what, self.epoch, self._step_index))

    def run_step(self, idx: int, batch: tp.Any, metrics: dict) -> dict:
        if self.is_training:
            metrics = self._run_training_step(idx, batch, metrics)
        else:
            metrics = super().run_step(idx, batch, metrics)
        cache = self.model.transformer.feature_cache
        if cache is not None:
            hits, misses = cache.take_counts()
            if hits + misses:
                metrics['feature_cache_hits'] = hits / (hits + misses)  # fraction of the step's examples
        return metrics

    def _run_training_step(self, idx: int, batch: tp.Any, metrics: dict) -> dict:
        """MusicGenSolver's training step, with non-finite steps stopped or skipped."""
        self._step_index, self._step_loss = idx, None
        try:
            metrics = super().run_step(idx, batch, metrics)
        except NonFiniteStepError as error:
            self.optimizer.zero_grad()
            self._skipped_steps += 1
            limit = int(self.cfg.get('skip_nonfinite_steps') or 0)
            if self._skipped_steps > limit:
                if limit:
                    raise NonFiniteStepError(f"{error} More than skip_nonfinite_steps={limit} such "
                                                    "steps in this epoch.") from None
                raise
            self.logger.warning("%s Skipped (%d of at most %d this epoch).", error, self._skipped_steps, limit)
            return {'skipped': 1.0}
        except RuntimeError as error:  # float16 GradScaler path: AudioCraft's check after a skipped step
            if str(error) != DIVERGED_MESSAGE:
                raise
            raise NonFiniteStepError(nonfinite_message('loss', self.epoch, idx)) from None
        finally:
            self._step_loss = None
            parts, self._forgetting_metrics = self._forgetting_metrics, {}
        if parts:  # AudioCraft logged the loss as `ce`: the new domain's ce and the terms apart
            metrics.update(parts)
            metrics['ppl'] = torch.exp(parts['ce'])
        metrics['skipped'] = 0.0
        return metrics

    def commit(self, save_checkpoints: bool = True) -> None:
        """AudioCraft's end of epoch, then `<xp>/loss_curves.png` (train/valid CE per epoch) on rank 0."""
        super().commit(save_checkpoints)
        cache = self.model.transformer.feature_cache
        if cache is not None:
            self.logger.info("Feature cache: %.1f MiB written by this process so far, in %s",
                             cache.bytes_written / 2 ** 20, cache.folder)
        if flashy.distrib.is_rank_zero() and self.history:
            plot_loss_curves({f'XP {self.xp.sig}': self.history}, self.folder / 'loss_curves.png')

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The solver state with plain containers only, loadable with `torch.load(weights_only=True)`."""
        return plain_state(super().state_dict())

    def run_stage(self, stage_name: str, method: tp.Callable, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        if sharding.is_sharded(self.model) and stage_name == 'train':
            sharding.reshard(self.model)
        elif sharding.is_sharded(self.model):  # every rank, before stages where ranks run forwards unevenly
            sharding.gather(self.model)
        return super().run_stage(stage_name, method, *args, **kwargs)

    def save_checkpoints(self) -> None:
        # Every rank logs the hash of its new layers: they must agree across ranks (sharded: rank 0's, gathered).
        state = ExtensionStateSource(self.model).state_dict()
        if state:
            self.logger.info("Extension hash (rank %d): %s", flashy.distrib.rank(), weights_hash(state))
        with self._checkpoint_io():
            super().save_checkpoints()

    def load_checkpoints(self, load_best: bool = False, ignore_state_keys: tp.List[str] = []) -> tp.Optional[dict]:
        with self._checkpoint_io():
            return super().load_checkpoints(load_best, ignore_state_keys)

    def _checkpoint_io(self) -> tp.ContextManager[None]:
        """Checkpoints written with a temporary file + fsync + rename (AudioCraft's rename alone does
        not fsync); read with weights_only=True (OmegaConf allow-listed: AudioCraft checkpoints pickle
        their config) whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says; found in this run's Dora folder
        (AudioCraft's resolver imports `audiocraft.train`, which a pip install cannot import)."""
        return checkpoint_io(save=save_checkpoint_atomically, load=xp_checkpoints.load_checkpoint,
                             resolve=xp_checkpoints.resolve_checkpoint_path(self.xp.dora.dir))

    def load_from_pretrained(self, name: str) -> dict:
        raise ValueError("continue_from=//pretrained/... loads a full MusicGen; to extend a pretrained model "
                         f"use pretrained_model_checkpoint={name} instead.")

    def show(self) -> None:
        super().show()
        self.model.print_trainable_parameters()

    def evaluate(self) -> dict:
        """Evaluate stage: base (extension_scale=0) and extended side by side on the same batches,
        new-domain and reference sets, scale sweep, audio metrics, samples; writes
        `<xp>/evaluation/metrics.json` (see `audiocraft_ext.evaluation.report`, docs/EVALUATION.md).
        `evaluate.compare_base=false` runs MusicGenSolver's evaluate stage instead."""
        if not self.cfg.evaluate.get('compare_base', True):
            return super().evaluate()
        self.model.eval()
        with torch.no_grad():
            return run_evaluation(self.evaluation_inputs())

    def evaluation_inputs(self) -> EvaluationInputs:
        """What the evaluate stage reads (`evaluation.inputs`), from this run in its current state."""
        cfg = self.cfg
        checkpoint = self.checkpoint_path()
        if not checkpoint.exists() and cfg.continue_from:
            checkpoint = cfg.continue_from
        # execute_only runs after the restored epochs: the last trained epoch is reported.
        epoch = self.epoch - 1 if cfg.execute_only else self.epoch
        if epoch <= 0 and Path(str(checkpoint)).is_file():  # continue_from: a new XP without history
            epoch = len(read_solver_checkpoint(checkpoint).get('history') or [])
        run = RunIdentity(folder=Path(self.folder), sig=self.xp.sig, epoch=epoch, checkpoint=str(checkpoint),
                          base_reference=self.base_reference, base_hash=self.base_hash, history=list(self.history))
        return EvaluationInputs(
            cfg=cfg, model=self.model, compression_model=self.compression_model, device=self.device,
            loader=self.dataloaders['evaluate'],
            reference_loader=functools.partial(reference_loader, cfg, dataset_type=self.DATASET_TYPE),
            held_out=functools.partial(self.base_generations.held_out, device=self.device),
            prepare=self._prepare_tokens_and_attributes, generate_step=self.run_generate_step,
            generation_params=dict(self.generation_params), autocast=self._autocast_factory(),
            progress=self.log_progress,
            out_dir=Path(self.folder) / str(cfg.evaluate.get('output_dir') or 'evaluation'),
            run=run, logger=self.logger)
