"""`replay.*` and `distill.*` of `ExtendedMusicGenSolver`: the forgetting control built from its config.

See `solvers.replay` for what the control does and configs/solver/extended_musicgen.yaml /
docs/TRAINING.md for the keys. The self-generated replay set is made by rank 0 with the frozen
base (the extended model at `extension_scale=0`, which is the base exactly), stored in
`replay.cache_dir` and read by every other rank and every later run on the same base.
"""
import copy
import math
from pathlib import Path
import typing as tp

from dora import git_save
import flashy
import omegaconf
import torch

from audiocraft.solvers import builders

from ..data.replay_set import GenerationSettings, ReplaySet, cached_replay_set, prompt_attributes, read_prompts
from ..evaluation.lm_metrics import extension_scale
from ..io.cache_dirs import cache_dir
from ..models.feature_cache import BaseFeatureCache
from .replay import ForgettingControl, GeneratedReplay, ManifestReplay, replay_size


def check_config(cfg: omegaconf.DictConfig) -> None:
    """Refuse `replay.*` / `distill.*` settings that cannot work, before anything is built."""
    replay, distill = cfg.replay, cfg.distill
    ratio, ce_weight, weight = float(replay.ratio), float(replay.ce_weight), float(distill.weight)
    if not math.isfinite(ratio) or ratio < 0:
        raise ValueError(f"replay.ratio={replay.ratio} must be a number >= 0 (0 turns replay off).")
    if ce_weight < 0 or weight < 0:
        raise ValueError(f"replay.ce_weight={ce_weight} and distill.weight={weight} must be >= 0.")
    if ratio > 0 and ce_weight + weight == 0:
        raise ValueError(f"replay.ratio={ratio} but replay.ce_weight and distill.weight are both 0: replay examples "
                         "would not change the loss. Set distill.weight (e.g. 1.0) or replay.ce_weight, or "
                         "replay.ratio=0 to turn replay off.")
    if ratio > 0 and replay.manifest and cfg.cache.get('write'):
        raise ValueError("replay.manifest with cache.write=true would write replay batches into the token cache of "
                         "the training set: write the cache in a run without replay (replay.ratio=0).")
    if not 0 <= int(replay.holdout) < int(replay.num_samples):
        raise ValueError(f"replay.holdout={replay.holdout} must be >= 0 and below replay.num_samples="
                         f"{replay.num_samples}: the other generations are the replay examples.")


def generation_settings(cfg: omegaconf.DictConfig) -> GenerationSettings:
    generation = omegaconf.OmegaConf.to_container(cfg.replay.generation, resolve=True) or {}
    return GenerationSettings(**generation)


def _frames(solver) -> int:
    duration = solver.cfg.replay.duration or solver.cfg.dataset.segment_duration
    return max(1, int(float(duration) * solver.compression_model.frame_rate))


def _absolute(path: str) -> Path:
    return Path(git_save.to_absolute_path(str(Path(str(path)).expanduser())))


def replay_cache_dir(cfg: omegaconf.DictConfig) -> Path:
    """`replay.cache_dir`, or when null the `replay` folder of our cache root (`io.cache_dirs`)."""
    return _absolute(cfg.replay.cache_dir) if cfg.replay.cache_dir else cache_dir('replay')


def generated_replay_set(solver) -> ReplaySet:
    """The base's own generations for `replay.prompts` (all of them: training and held-out parts)."""
    cfg = solver.cfg.replay
    prompts = read_prompts(_absolute(cfg.prompts) if cfg.prompts else None)
    settings = generation_settings(solver.cfg)
    args = dict(base_hash=solver.base_hash, prompts=prompts, num_samples=int(cfg.num_samples),
                num_frames=_frames(solver), sample_rate=int(solver.cfg.sample_rate), seed=int(cfg.seed),
                cache_dir=replay_cache_dir(solver.cfg), batch_size=int(cfg.batch_size), settings=settings,
                log=solver.logger.info)
    model = solver.model
    if not flashy.distrib.is_rank_zero():  # rank 0 generates; the others read what it stored
        flashy.distrib.barrier()
    was_training = model.training
    try:
        with extension_scale(model, 0.0), solver.autocast:  # scale 0: the frozen base exactly
            replay = cached_replay_set(model, **args)
    finally:
        model.train(was_training)
    if flashy.distrib.is_rank_zero():
        flashy.distrib.barrier()
    return replay


def manifest_loader(solver, manifest: str, batch_size: int):
    """A loader over the old-domain manifest with the training split's settings, `batch_size` per rank
    (AudioCraft's loader takes `dataset.batch_size` per rank; `train.get_solver` has already divided it)."""
    cfg = copy.deepcopy(solver.cfg)
    with omegaconf.open_dict(cfg):
        cfg.datasource = {'max_sample_rate': solver.cfg.datasource.max_sample_rate,
                          'max_channels': solver.cfg.datasource.max_channels, 'train': manifest}
        cfg.execute_only = 'train'
        cfg.dataset.batch_size = batch_size
        cfg.seed = int(solver.cfg.seed) + 1  # other draws than the training split's
    return builders.get_audio_datasets(cfg, dataset_type=solver.DATASET_TYPE)['train']


def resolve_replay_manifest(value: str) -> str:
    """`replay.manifest` -> a manifest path: a folder with data.jsonl(.gz), a manifest file, or an egs root
    (its train/ split). Relative paths are relative to where the command started."""
    path = _absolute(value)
    if path.is_file() or (path / 'data.jsonl').exists() or (path / 'data.jsonl.gz').exists():
        return str(path)
    if (path / 'train').is_dir():
        return resolve_replay_manifest(str(path / 'train'))
    raise FileNotFoundError(f"replay.manifest={value}: {path} is neither a manifest folder (data.jsonl) nor an egs "
                            "root with a train/ split. Point it at your old-domain data, or set replay.manifest=null "
                            "to replay the base's own generations.")


def replay_feature_cache(solver) -> tp.Optional[BaseFeatureCache]:
    """The cache of the base's output on replay examples (`replay.feature_cache`, bounded by
    `replay.feature_cache_max_gb`), or None when off, when `feature_cache.path` already caches every
    batch, or when the replay examples cannot repeat (`replay.manifest`: AudioCraft's loader draws a
    random segment and random caption augmentations for every example, so no entry would be read
    again). The base's own generations are a fixed set: they keep it."""
    cfg = solver.cfg
    if not cfg.replay.get('feature_cache') or float(cfg.replay.ratio) == 0 or solver.model.transformer.feature_cache:
        return None
    control = getattr(solver, 'forgetting', None)
    if control is not None and isinstance(control.source, ManifestReplay):
        solver.logger.info("Replay feature cache off: replay.manifest examples are random segments of the "
                           "old-domain files that never repeat, so cached entries would never be read.")
        return None
    max_gb = cfg.replay.get('feature_cache_max_gb')
    cache = BaseFeatureCache(replay_cache_dir(cfg) / 'features', solver.model.base_transformer,
                             None if max_gb is None else int(float(max_gb) * 2 ** 30))
    bound = 'unbounded' if max_gb is None else f'at most {float(max_gb):g} GB'
    solver.logger.info("Replay examples: the frozen base's outputs cached in %s (%s)", cache.folder, bound)
    return cache


def build_forgetting_control(solver) -> tp.Optional[ForgettingControl]:
    """The control `replay.*` / `distill.*` ask for, or None when `replay.ratio` is 0."""
    cfg = solver.cfg
    if float(cfg.replay.ratio) == 0:
        return None
    ratio = float(cfg.replay.ratio)
    size = replay_size(ratio, cfg.dataset.batch_size)  # per rank, as the batches `loss` gets
    source: tp.Union[ManifestReplay, GeneratedReplay]
    if cfg.replay.manifest:
        manifest = resolve_replay_manifest(cfg.replay.manifest)
        source = ManifestReplay(manifest_loader(solver, manifest, size), solver._prepare_tokens_and_attributes)
        solver.logger.info("Replay: %d old-domain examples per step from %s", size, manifest)
    else:
        training, _ = generated_replay_set(solver).split(int(cfg.replay.holdout))
        source = GeneratedReplay(training, solver.model, int(cfg.sample_rate), seed=int(cfg.seed))
        solver.logger.info("Replay: %d per step of the base's own generations (%d)", size, len(training))
    control = ForgettingControl(source, ratio, float(cfg.replay.ce_weight), float(cfg.distill.weight))
    solver.logger.info("Forgetting control: loss = ce(new) + %g ce(replay) + %g KL(base || extended)(replay)",
                       control.ce_weight, control.distill_weight)
    return control


class HeldOutGenerations:
    """The held-out part of the replay set as evaluation batches: (codes [b, K, T], prompts) pairs."""
    def __init__(self, solver, batch_size: int):
        replay = generated_replay_set(solver)
        _, self.held_out = replay.split(int(solver.cfg.replay.holdout))
        if len(self.held_out) == 0:
            raise ValueError("replay.holdout=0: no held-out generation to measure forgetting on. Set replay.holdout "
                             "(e.g. 16) or evaluate.reference_dset to your old-domain data.")
        self.solver = solver
        self.batches = [(self.held_out.codes[i:i + batch_size], self.held_out.prompts[i:i + batch_size])
                        for i in range(0, len(self.held_out), batch_size)]
        self.description = (f"the base's own generations: {len(self.held_out)} held out of the replay set "
                            f"{replay.key} ({len(set(self.held_out.prompts))} prompts)")

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def prepare(self, batch: tp.Tuple[torch.Tensor, tp.List[str]]) -> tp.Tuple[dict, torch.Tensor, torch.Tensor]:
        """(condition_tensors, codes, padding_mask) of a batch, conditions encoded as in evaluation (no dropout)."""
        codes, prompts = batch
        model = self.solver.model
        tokenized = model.condition_provider.tokenize(prompt_attributes(model, prompts, int(self.solver.cfg.sample_rate)))
        with self.solver.autocast:
            condition_tensors = model.condition_provider(tokenized)
        codes = codes.to(self.solver.device)
        return condition_tensors, codes, torch.ones_like(codes, dtype=torch.bool)
