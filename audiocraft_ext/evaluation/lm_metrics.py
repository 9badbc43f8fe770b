"""Cross entropy and perplexity of the LM for several `extension_scale` values on the same batches.

`extension_scale = 0` gives the frozen base's logits exactly (the new layers' residual branches
are multiplied by 0), so "base" and "extended" come from one model and one pass over the data:
every batch is tokenised once and scored once per scale.

Definitions (token-weighted over the whole set, not averaged per batch):

    ce_per_codebook[k] = sum of -log p(target) over valid tokens of codebook k / their count
    ce                 = mean over codebooks of ce_per_codebook
    ppl_per_codebook   = exp(ce_per_codebook),  ppl = exp(ce)

Valid tokens are those of `padding_mask & model_output.mask`, as in `MusicGenSolver.run_step`
(the codebook pattern's delay positions are excluded). AudioCraft's own `ce` of the evaluate
stage averages per-batch values instead; both agree when all batches hold the same number of
valid tokens.
"""
import math
import typing as tp

import torch
import torch.nn.functional as F

from .inputs import Prepare

# The two models every evaluation compares: the frozen base (extension_scale 0) and the extended model.
MODELS = ('base', 'extended')


class CrossEntropyTotals:
    """Sums of negative log-likelihood and valid-token counts per codebook."""
    def __init__(self, num_codebooks: int):
        self.nll = torch.zeros(num_codebooks, dtype=torch.float64)
        self.count = torch.zeros(num_codebooks, dtype=torch.float64)

    def update(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
        """logits [B, K, T, card], targets [B, K, T], mask [B, K, T] (bool)."""
        assert logits.shape[:-1] == targets.shape == mask.shape, (logits.shape, targets.shape, mask.shape)
        for k in range(targets.shape[1]):
            valid = mask[:, k]  # [B, T]
            if valid.any():
                nll = F.cross_entropy(logits[:, k][valid].float(), targets[:, k][valid], reduction='sum')
                self.nll[k] += float(nll)
                self.count[k] += float(valid.sum())

    def all_reduce(self) -> None:
        """Sum over distributed workers (no-op when not distributed)."""
        import flashy
        if flashy.distrib.is_distributed():
            both = torch.stack([self.nll, self.count])
            flashy.distrib.all_reduce(both)
            self.nll, self.count = both[0], both[1]

    def summary(self) -> tp.Dict[str, tp.Any]:
        if (self.count == 0).any():
            raise RuntimeError("No valid token to score in the evaluation set: is it empty?")
        per_codebook = (self.nll / self.count).tolist()
        ce = sum(per_codebook) / len(per_codebook)
        return {'ce': ce, 'ppl': math.exp(ce), 'ce_per_codebook': per_codebook,
                'ppl_per_codebook': [math.exp(v) for v in per_codebook],
                'tokens_per_codebook': [int(c) for c in self.count.tolist()]}


@torch.no_grad()
def cross_entropy_by_scale(model, loader: tp.Iterable, scales: tp.Sequence[float], prepare: Prepare,
                           autocast: tp.Callable[[], tp.ContextManager]) -> tp.Dict[float, tp.Dict[str, tp.Any]]:
    """Score every batch of `loader` with each `extension_scale` in `scales`.

    Args:
        model: an `ExtendedLMModel`.
        loader: batches, e.g. of (audio, infos) from the evaluate split.
        scales: the `extension_scale` values (0.0 is the frozen base).
        prepare: turns a batch into (condition_tensors, codes [B, K, T], padding_mask [B, K, T]),
            for audio batches as training and validation do.
        autocast: returns the autocast context the model runs in.
    Returns:
        {scale: summary}, see `CrossEntropyTotals.summary`.
    """
    scales = list(dict.fromkeys(float(s) for s in scales))
    totals = {scale: CrossEntropyTotals(model.num_codebooks) for scale in scales}
    model.eval()
    for batch in loader:
        condition_tensors, audio_tokens, padding_mask = prepare(batch)
        for scale in scales:
            with model.scaled(scale), autocast():
                output = model.compute_predictions(audio_tokens, [], condition_tensors)  # [B, K, T, card]
            totals[scale].update(output.logits, audio_tokens, padding_mask & output.mask)
    for total in totals.values():
        total.all_reduce()
    return {scale: total.summary() for scale, total in totals.items()}
