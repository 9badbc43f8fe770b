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
from contextlib import contextmanager
import math
import typing as tp

import torch
import torch.nn.functional as F

# The two models every evaluation compares: the frozen base (extension_scale 0) and the extended model.
MODELS = ('base', 'extended')


@contextmanager
def extension_scale(model, scale: float):
    """Temporarily set `model.extension_scale` (an `ExtendedLMModel`)."""
    previous = model.extension_scale
    model.extension_scale = float(scale)
    try:
        yield
    finally:
        model.extension_scale = previous


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
def cross_entropy_by_scale(solver, loader: tp.Iterable, scales: tp.Sequence[float],
                           progress_name: tp.Optional[str] = None,
                           prepare: tp.Optional[tp.Callable[[tp.Any], tp.Tuple[dict, torch.Tensor, torch.Tensor]]] = None
                           ) -> tp.Dict[float, tp.Dict[str, tp.Any]]:
    """Score every batch of `loader` with each `extension_scale` in `scales`.

    Args:
        solver: an `ExtendedMusicGenSolver` inside a stage (its `_prepare_tokens_and_attributes`
            tokenises batches exactly as training and validation do).
        loader: batches of (audio, infos), e.g. `solver.dataloaders['evaluate']`.
        scales: the `extension_scale` values (0.0 is the frozen base).
        prepare: turns a batch into (condition_tensors, codes [B, K, T], padding_mask [B, K, T]);
            default `solver._prepare_tokens_and_attributes` (audio batches). Batches of codes, e.g.
            the base's own generations, bring their own.
    Returns:
        {scale: summary}, see `CrossEntropyTotals.summary`.
    """
    model = solver.model
    scales = list(dict.fromkeys(float(s) for s in scales))
    totals = {scale: CrossEntropyTotals(model.num_codebooks) for scale in scales}
    model.eval()
    if progress_name is not None:
        loader = solver.log_progress(progress_name, loader, total=len(loader), updates=solver.log_updates)
    prepare = prepare or solver._prepare_tokens_and_attributes
    for batch in loader:
        condition_tensors, audio_tokens, padding_mask = prepare(batch)
        for scale in scales:
            with extension_scale(model, scale), solver.autocast:
                output = model.compute_predictions(audio_tokens, [], condition_tensors)  # [B, K, T, card]
            totals[scale].update(output.logits, audio_tokens, padding_mask & output.mask)
    for total in totals.values():
        total.all_reduce()
    return {scale: total.summary() for scale, total in totals.items()}
