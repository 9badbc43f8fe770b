"""Forgetting control: replay batches mixed into every training step, distilled towards the base.

Every training step of the new domain (B examples) also scores `round(replay.ratio * B)` replay
examples, drawn from

- the user's old-domain data (`replay.manifest`: a manifest folder or file, read like the
  training split), or, when there is none,
- the base's own generations for a list of prompts (`data.replay_set`: generated once with the
  frozen base, cached and reused; a held-out part measures forgetting in the evaluate stage).

On a replay batch the loss adds `replay.ce_weight` x its cross entropy and `distill.weight` x
KL(p_base || p_extended) (`models.distillation.kl_from_base`). The base's logits come from the
same forward as the extended ones (`ExtendedLMModel.compute_predictions_with_base`): the target
costs the output heads only. The step's loss is

    ce(new) + replay.ce_weight * ce(replay) + distill.weight * kl(replay)

and its cost grows with the number of replay examples (about `1 + replay.ratio` times a plain step).
The base's generations come back again and again (a few dozen of them), so the frozen base's
output on them is read from a feature cache (`replay.feature_cache`, bounded by
`replay.feature_cache_max_gb`): exact, and a replay example then costs the new layers and the
heads only. Old-domain examples (random segments, random caption augmentations) never repeat:
they stay uncached.

The path from the config to the loss: `ForgettingConfig.from_cfg` (the `replay.*` / `distill.*`
keys, checked once) -> `build_forgetting_control` (its inputs: the model, the config, a function
that prepares audio batches, the autocast setting) -> `ForgettingControl.loss` in every step.
Nothing here holds the solver.
"""
import copy
from dataclasses import dataclass, field, replace
import math
from pathlib import Path
import typing as tp

from dora import git_save
import flashy
import omegaconf
import torch

from audiocraft.models.lm import LMOutput
from audiocraft.solvers import builders

from ..data.replay_set import BaseGenerations, GenerationSettings, ReplaySet, prompt_attributes
from ..io import cache_dirs
from ..models.distillation import kl_from_base
from ..models.extended_lm import ExtendedLMModel
from ..models.feature_cache import BaseFeatureCache

# (codes [n, K, T], conditions, condition_tensors) -> (LMOutput, base logits [n, K, T, card] or None)
Predict = tp.Callable[[torch.Tensor, tp.List[tp.Any], tp.Optional[dict]], tp.Tuple[LMOutput, tp.Optional[torch.Tensor]]]
# (logits [n, K, T, card], targets [n, K, T], mask [n, K, T]) -> (ce, ce per codebook)
CrossEntropy = tp.Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tp.Tuple[torch.Tensor, tp.List[torch.Tensor]]]
# an audio batch (audio, infos) -> (condition_tensors, codes [n, K, T], padding_mask [n, K, T])
Prepare = tp.Callable[[tp.Any], tp.Tuple[dict, torch.Tensor, torch.Tensor]]
Autocast = tp.Callable[[], tp.ContextManager]
Log = tp.Callable[..., None]


def _absolute(path: tp.Any) -> Path:
    """A path as the user meant it: relative to where the command started (Hydra moves the working directory)."""
    return Path(git_save.to_absolute_path(str(Path(str(path)).expanduser())))


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


@dataclass(frozen=True)
class ForgettingConfig:
    """`replay.*` and `distill.*` (configs/solver/extended_musicgen.yaml, docs/TRAINING.md), checked once.

    Attributes:
        ratio: replay examples per new-domain example in each step; 0 turns the control off.
        ce_weight: weight of the cross entropy on replay examples.
        distill_weight: weight of KL(p_base || p_extended) on replay examples (`distill.weight`).
        manifest: the old-domain manifest replayed, or None for the base's own generations.
        prompts: the prompts file of those generations (None: the shipped list).
        num_samples, holdout: generations made; the last `holdout` of them are held out.
        duration: seconds per generation (None: the caller's segment duration).
        seed, batch_size, generation: how the base generates them.
        cache_dir: where they are stored (None: our cache root's `replay` folder).
        feature_cache, feature_cache_max_gb: the base's output on them, cached (in GB; None: unbounded).
    """
    ratio: float
    ce_weight: float
    distill_weight: float
    manifest: tp.Optional[str] = None
    prompts: tp.Optional[Path] = None
    num_samples: int = 96
    holdout: int = 16
    duration: tp.Optional[float] = None
    seed: int = 0
    batch_size: int = 16
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    cache_dir: tp.Optional[Path] = None
    feature_cache: bool = False
    feature_cache_max_gb: tp.Optional[float] = None

    def __post_init__(self) -> None:
        ratio, ce_weight, weight = self.ratio, self.ce_weight, self.distill_weight
        if not math.isfinite(ratio) or ratio < 0:
            raise ValueError(f"replay.ratio={ratio} must be a number >= 0 (0 turns replay off).")
        if ce_weight < 0 or weight < 0:
            raise ValueError(f"replay.ce_weight={ce_weight} and distill.weight={weight} must be >= 0.")
        if ratio > 0 and ce_weight + weight == 0:
            raise ValueError(f"replay.ratio={ratio} but replay.ce_weight and distill.weight are both 0: replay "
                             "examples would not change the loss. Set distill.weight (e.g. 1.0) or replay.ce_weight, "
                             "or replay.ratio=0 to turn replay off.")
        if not 0 <= self.holdout < self.num_samples:
            raise ValueError(f"replay.holdout={self.holdout} must be >= 0 and below replay.num_samples="
                             f"{self.num_samples}: the other generations are the replay examples.")

    @classmethod
    def from_cfg(cls, cfg: omegaconf.DictConfig) -> 'ForgettingConfig':
        """The control a solver config asks for; paths made absolute, the manifest found."""
        replay, distill = cfg.replay, cfg.distill
        ratio = float(replay.ratio)
        if ratio > 0 and replay.manifest and cfg.cache.get('write'):
            raise ValueError("replay.manifest with cache.write=true would write replay batches into the token cache "
                             "of the training set: write the cache in a run without replay (replay.ratio=0).")
        generation = omegaconf.OmegaConf.to_container(replay.generation, resolve=True) or {}
        max_gb = replay.get('feature_cache_max_gb')
        duration = replay.duration or cfg.dataset.get('segment_duration')
        config = cls(ratio=ratio, ce_weight=float(replay.ce_weight), distill_weight=float(distill.weight),
                     prompts=_absolute(replay.prompts) if replay.prompts else None,
                     num_samples=int(replay.num_samples), holdout=int(replay.holdout),
                     duration=None if duration is None else float(duration), seed=int(replay.seed),
                     batch_size=int(replay.batch_size), generation=GenerationSettings(**generation),
                     cache_dir=_absolute(replay.cache_dir) if replay.cache_dir else cache_dirs.cache_dir('replay'),
                     feature_cache=bool(replay.get('feature_cache')),
                     feature_cache_max_gb=None if max_gb is None else float(max_gb))
        if ratio > 0 and replay.manifest:  # found before anything is built
            config = replace(config, manifest=resolve_replay_manifest(replay.manifest))
        return config


def replay_size(ratio: float, batch_size: int) -> int:
    """Replay examples that go with a new-domain batch of `batch_size` (at least 1 when `ratio` > 0)."""
    return max(1, int(round(ratio * batch_size))) if ratio > 0 else 0


def replay_predict(model: ExtendedLMModel, feature_cache: tp.Optional[BaseFeatureCache] = None) -> Predict:
    """`model.compute_predictions_with_base`, reading the base's output on replay examples from
    `feature_cache` when given (only for these calls: the model's own cache setting is restored)."""
    def predict(codes: torch.Tensor, conditions: tp.List[tp.Any], condition_tensors: tp.Optional[dict]):
        transformer = model.transformer
        previous = transformer.feature_cache
        transformer.feature_cache = feature_cache or previous
        try:
            return model.compute_predictions_with_base(codes, conditions, condition_tensors)
        finally:
            transformer.feature_cache = previous
    return predict


def base_generations(config: ForgettingConfig, model: ExtendedLMModel, base_hash: str, sample_rate: int,
                     frame_rate: float, autocast: Autocast, log: Log) -> BaseGenerations:
    """The base's own generations `config` describes (`data.replay_set.BaseGenerations`, made on first use)."""
    if config.duration is None:
        raise ValueError("replay.duration is null and there is no dataset.segment_duration: set replay.duration "
                         "(seconds per generation of the base).")
    return BaseGenerations(model, base_hash, prompts=config.prompts, num_samples=config.num_samples,
                           holdout=config.holdout, num_frames=max(1, int(config.duration * frame_rate)),
                           sample_rate=sample_rate, seed=config.seed, batch_size=config.batch_size,
                           settings=config.generation, cache_dir=config.cache_dir, autocast=autocast, log=log)


# ---- replay sources ---------------------------------------------------------------------------

class ReplayBatch(tp.NamedTuple):
    """Replay examples ready for `compute_predictions`: either `conditions` (attributes, dropped out and
    encoded by `LMModel.forward` as for the new domain) or `condition_tensors` (already encoded)."""
    codes: torch.Tensor  # [n, K, T]
    conditions: tp.List[tp.Any]
    condition_tensors: tp.Optional[dict]
    padding_mask: torch.Tensor  # [n, K, T] bool


class GeneratedReplay:
    """Replay examples drawn (with replacement, seeded) from the base's own generations.

    Args:
        replay_set: a `ReplaySet` (codes [N, K, T] and their prompts: the training part), or a function
            returning it on first use.
        lm: the LM the prompts are conditions for (its condition provider decides if a melody is needed).
        sample_rate (int): the model's sample rate (for the empty melody of melody models).
        seed (int): seed of the draws.
    """
    def __init__(self, replay_set: tp.Union[ReplaySet, tp.Callable[[], ReplaySet]], lm: torch.nn.Module,
                 sample_rate: int, seed: int = 0):
        self._replay_set = replay_set
        self.lm = lm
        self.sample_rate = sample_rate
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn: tp.List[int] = []  # indices of the last batch (tests, logs)

    @property
    def replay_set(self) -> ReplaySet:
        if callable(self._replay_set):
            self._replay_set = self._replay_set()
        if len(self._replay_set) == 0:
            raise ValueError("The replay set is empty: generate more samples (replay.num_samples) than "
                             "replay.holdout.")
        return self._replay_set

    def reseed(self, seed: int) -> None:
        """Restart the draws from `seed` (the solver does it every epoch: resumed runs draw the same)."""
        self.generator.manual_seed(seed)

    def sample(self, count: int, device: tp.Any) -> ReplayBatch:
        # Every rank draws the whole world's examples (same seed, same draws) and keeps its share:
        # N processes replay what one process with the global batch replays.
        replay_set = self.replay_set
        rank, world_size = flashy.distrib.rank(), flashy.distrib.world_size()
        indices = torch.randint(len(replay_set), (count * world_size,), generator=self.generator)
        indices = indices[rank * count:(rank + 1) * count]
        self.drawn = indices.tolist()
        codes = replay_set.codes[indices].to(device)  # [n, K, T]
        prompts = [replay_set.prompts[i] for i in self.drawn]
        return ReplayBatch(codes, prompt_attributes(self.lm, prompts, self.sample_rate), None,
                           torch.ones_like(codes, dtype=torch.bool))


def manifest_loader(cfg: omegaconf.DictConfig, manifest: str, batch_size: int,
                    dataset_type: builders.DatasetType) -> tp.Iterable:
    """A loader over the old-domain `manifest` with the training split's settings of `cfg`, `batch_size`
    per rank (AudioCraft's loader takes `dataset.batch_size` per rank: the config's is already divided)."""
    cfg = copy.deepcopy(cfg)
    with omegaconf.open_dict(cfg):
        cfg.datasource = {'max_sample_rate': cfg.datasource.max_sample_rate,
                          'max_channels': cfg.datasource.max_channels, 'train': manifest}
        cfg.execute_only = 'train'
        cfg.dataset.batch_size = batch_size
        cfg.seed = int(cfg.seed) + 1  # other draws than the training split's
    return builders.get_audio_datasets(cfg, dataset_type=dataset_type)['train']


class ManifestReplay:
    """Replay examples from the user's old-domain data: an AudioCraft loader over its manifest.

    Args:
        loader: yields (audio, infos) batches of the replay size, endlessly re-iterated; or a
            function returning it on first use.
        prepare: tokenises a batch and encodes its conditions (`MusicGenSolver._prepare_tokens_and_attributes`).
    """
    def __init__(self, loader: tp.Union[tp.Iterable, tp.Callable[[], tp.Iterable]], prepare: Prepare):
        self._loader = loader
        self.prepare = prepare
        self._iterator: tp.Optional[tp.Iterator] = None

    def reseed(self, seed: int) -> None:
        """Start a new pass over the loader (its order comes from torch's global seed, set every epoch)."""
        self._iterator = None

    def _next_batch(self) -> tp.Any:
        if callable(self._loader):
            self._loader = self._loader()
        if self._iterator is None:
            self._iterator = iter(self._loader)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self._loader)
            return next(self._iterator)

    def sample(self, count: int, device: tp.Any) -> ReplayBatch:
        condition_tensors, codes, padding_mask = self.prepare(self._next_batch())
        if codes.shape[0] != count:
            raise RuntimeError(f"The replay loader gave {codes.shape[0]} examples instead of {count}.")
        return ReplayBatch(codes, [], condition_tensors, padding_mask)


# ---- the control --------------------------------------------------------------------------------

class ForgettingControl:
    """The replay and distillation terms of one training step (see module doc).

    Args:
        source: `GeneratedReplay` or `ManifestReplay` (anything with `sample(count, device) -> ReplayBatch`
            and `reseed(seed)`).
        config: its weights and ratio (`ratio` > 0).
        predict: scores replay codes; returns the base's logits too (`replay_predict`).
        cross_entropy: MusicGen's masked cross entropy.
        feature_cache: the cache `predict` reads the base's output from, for its hit counts (or None).
    """
    def __init__(self, source: tp.Any, config: ForgettingConfig, predict: Predict, cross_entropy: CrossEntropy,
                 feature_cache: tp.Optional[BaseFeatureCache] = None):
        assert config.ratio > 0, "a control with replay.ratio=0 is no control: build none"
        self.source, self.config = source, config
        self.predict, self.cross_entropy = predict, cross_entropy
        self.feature_cache = feature_cache

    def loss(self, batch_size: int, device: tp.Any) -> tp.Tuple[torch.Tensor, tp.Dict[str, torch.Tensor]]:
        """The replay terms for a new-domain batch of `batch_size`: (weighted loss, detached metrics)."""
        config = self.config
        replay = self.source.sample(replay_size(config.ratio, batch_size), device)
        output, base_logits = self.predict(replay.codes, replay.conditions, replay.condition_tensors)
        mask = replay.padding_mask & output.mask  # [n, K, T]
        ce, _ = self.cross_entropy(output.logits, replay.codes, mask)
        loss = config.ce_weight * ce
        metrics = {'replay_ce': ce.detach()}
        if config.distill_weight > 0:
            assert base_logits is not None, "distillation needs the base's logits"
            kl, _ = kl_from_base(output.logits, base_logits, mask)
            loss = loss + config.distill_weight * kl
            metrics['distill_kl'] = kl.detach()
        if self.feature_cache is not None:
            hits, misses = self.feature_cache.take_counts()
            metrics['replay_cache_hits'] = torch.tensor(hits / max(1, hits + misses))
        return loss, metrics


def build_forgetting_control(config: ForgettingConfig, model: ExtendedLMModel, generations: BaseGenerations,
                             loader: tp.Callable[[int], tp.Iterable], prepare: Prepare,
                             cross_entropy: CrossEntropy, batch_size: int, seed: int,
                             log: Log) -> tp.Optional[ForgettingControl]:
    """The control `config` asks for, or None when `config.ratio` is 0.

    Args:
        config, model, generations: the control's config, the extended model, the base's generations.
        loader: `batch_size -> loader` over `config.manifest` (used when it is set, on first use).
        prepare: tokenises an audio batch (old-domain replay).
        cross_entropy: MusicGen's masked cross entropy.
        batch_size: new-domain examples per step and rank (replay examples follow `config.ratio`).
        seed: seed of the draws of generated replay.
        log: an info logger.
    """
    if config.ratio == 0:
        return None
    size = replay_size(config.ratio, batch_size)  # per rank, as the batches `loss` gets
    source: tp.Union[ManifestReplay, GeneratedReplay]
    feature_cache = None
    if config.manifest:
        source = ManifestReplay(lambda: loader(size), prepare)
        log("Replay: %d old-domain examples per step from %s", size, config.manifest)
        if config.feature_cache:
            log("Replay feature cache off: replay.manifest examples are random segments of the old-domain files "
                "that never repeat, so cached entries would never be read.")
    else:
        source = GeneratedReplay(generations.training_part, model, generations.sample_rate, seed=seed)
        log("Replay: %d per step of the base's own generations (%d in the set, %d held out)", size,
            config.num_samples, config.holdout)
        if config.feature_cache and not model.transformer.feature_cache:  # `feature_cache.path` caches all
            max_gb = config.feature_cache_max_gb
            feature_cache = BaseFeatureCache(Path(config.cache_dir or cache_dirs.cache_dir('replay')) / 'features',
                                             model.base_transformer, None if max_gb is None else int(max_gb * 2 ** 30))
            log("Replay examples: the frozen base's outputs cached in %s (%s)", feature_cache.folder,
                'unbounded' if max_gb is None else f'at most {max_gb:g} GB')
    control = ForgettingControl(source, config, replay_predict(model, feature_cache), cross_entropy, feature_cache)
    log("Forgetting control: loss = ce(new) + %g ce(replay) + %g KL(base || extended)(replay)",
        config.ce_weight, config.distill_weight)
    return control
