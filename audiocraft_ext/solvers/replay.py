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
output on them is read from a feature cache (`replay_predict` with a `BaseFeatureCache`,
`replay.feature_cache=true`, bounded by `replay.feature_cache_max_gb`): exact, and a replay
example then costs the new layers and the heads only. Old-domain examples (random segments, random
caption augmentations) never repeat: `replay_config.replay_feature_cache` leaves them uncached.
"""
import typing as tp

import flashy
import torch

from audiocraft.models.lm import LMOutput

from ..data.replay_set import ReplaySet, prompt_attributes
from ..models.distillation import kl_from_base
from ..models.extended_lm import ExtendedLMModel
from ..models.feature_cache import BaseFeatureCache

# (codes [n, K, T], conditions, condition_tensors) -> (LMOutput, base logits [n, K, T, card] or None)
Predict = tp.Callable[[torch.Tensor, tp.List[tp.Any], tp.Optional[dict]], tp.Tuple[LMOutput, tp.Optional[torch.Tensor]]]
# (logits [n, K, T, card], targets [n, K, T], mask [n, K, T]) -> (ce, ce per codebook)
CrossEntropy = tp.Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tp.Tuple[torch.Tensor, tp.List[torch.Tensor]]]


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
        replay_set (ReplaySet): codes [N, K, T] and their prompts (the training part).
        lm: the LM the prompts are conditions for (its condition provider decides if a melody is needed).
        sample_rate (int): the model's sample rate (for the empty melody of melody models).
        seed (int): seed of the draws.
    """
    def __init__(self, replay_set: ReplaySet, lm: torch.nn.Module, sample_rate: int, seed: int = 0):
        if len(replay_set) == 0:
            raise ValueError("The replay set is empty: generate more samples (replay.num_samples) than "
                             "replay.holdout.")
        self.replay_set = replay_set
        self.lm = lm
        self.sample_rate = sample_rate
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn: tp.List[int] = []  # indices of the last batch (tests, logs)

    def reseed(self, seed: int) -> None:
        """Restart the draws from `seed` (the solver does it every epoch: resumed runs draw the same)."""
        self.generator.manual_seed(seed)

    def sample(self, count: int, device: tp.Any) -> ReplayBatch:
        # Every rank draws the whole world's examples (same seed, same draws) and keeps its share:
        # N processes replay what one process with the global batch replays.
        rank, world_size = flashy.distrib.rank(), flashy.distrib.world_size()
        indices = torch.randint(len(self.replay_set), (count * world_size,), generator=self.generator)
        indices = indices[rank * count:(rank + 1) * count]
        self.drawn = indices.tolist()
        codes = self.replay_set.codes[indices].to(device)  # [n, K, T]
        prompts = [self.replay_set.prompts[i] for i in self.drawn]
        return ReplayBatch(codes, prompt_attributes(self.lm, prompts, self.sample_rate), None,
                           torch.ones_like(codes, dtype=torch.bool))


class ManifestReplay:
    """Replay examples from the user's old-domain data: an AudioCraft loader over its manifest.

    Args:
        loader: yields (audio, infos) batches of the replay size, endlessly re-iterated.
        prepare: tokenises a batch and encodes its conditions (`MusicGenSolver._prepare_tokens_and_attributes`),
            returning (condition_tensors, codes [n, K, T], padding_mask [n, K, T]).
    """
    def __init__(self, loader: tp.Iterable, prepare: tp.Callable[[tp.Any], tp.Tuple[dict, torch.Tensor, torch.Tensor]]):
        self.loader = loader
        self.prepare = prepare
        self._iterator: tp.Optional[tp.Iterator] = None

    def reseed(self, seed: int) -> None:
        """Start a new pass over the loader (its order comes from torch's global seed, set every epoch)."""
        self._iterator = None

    def _next_batch(self) -> tp.Any:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.loader)
            return next(self._iterator)

    def sample(self, count: int, device: tp.Any) -> ReplayBatch:
        condition_tensors, codes, padding_mask = self.prepare(self._next_batch())
        if codes.shape[0] != count:
            raise RuntimeError(f"The replay loader gave {codes.shape[0]} examples instead of {count}.")
        return ReplayBatch(codes, [], condition_tensors, padding_mask)


class ForgettingControl:
    """The replay and distillation terms of one training step (see module doc).

    Args:
        source: `GeneratedReplay` or `ManifestReplay` (anything with `sample(count, device) -> ReplayBatch`).
        ratio (float): replay examples per new-domain example in each step (> 0).
        ce_weight (float): weight of the cross entropy on replay examples.
        distill_weight (float): weight of KL(p_base || p_extended) on replay examples.
    """
    def __init__(self, source: tp.Any, ratio: float, ce_weight: float = 1.0, distill_weight: float = 1.0):
        if not ratio > 0:
            raise ValueError(f"replay.ratio={ratio} must be > 0 for a replay source to be used.")
        if ce_weight < 0 or distill_weight < 0 or ce_weight + distill_weight == 0:
            raise ValueError(f"replay.ce_weight={ce_weight} and distill.weight={distill_weight} must be >= 0 and "
                             "not both 0: replay batches would not change the loss.")
        self.source = source
        self.ratio = float(ratio)
        self.ce_weight = float(ce_weight)
        self.distill_weight = float(distill_weight)

    @property
    def needs_base_logits(self) -> bool:
        return self.distill_weight > 0

    def loss(self, predict: Predict, cross_entropy: CrossEntropy, batch_size: int,
             device: tp.Any) -> tp.Tuple[torch.Tensor, tp.Dict[str, torch.Tensor]]:
        """The replay terms for a new-domain batch of `batch_size`: (weighted loss, detached metrics).

        Args:
            predict: scores replay codes; returns the base's logits too when `needs_base_logits`.
            cross_entropy: MusicGen's masked cross entropy.
        """
        replay = self.source.sample(replay_size(self.ratio, batch_size), device)
        output, base_logits = predict(replay.codes, replay.conditions, replay.condition_tensors)
        mask = replay.padding_mask & output.mask  # [n, K, T]
        ce, _ = cross_entropy(output.logits, replay.codes, mask)
        loss = self.ce_weight * ce
        metrics = {'replay_ce': ce.detach()}
        if self.needs_base_logits:
            assert base_logits is not None, "distillation needs the base's logits"
            kl, _ = kl_from_base(output.logits, base_logits, mask)
            loss = loss + self.distill_weight * kl
            metrics['distill_kl'] = kl.detach()
        return loss, metrics

