"""KL divergence from the frozen base's predictions to the extended model's (forgetting control).

The base's logits come from the same forward as the extended ones
(`ExtendedLMModel.compute_predictions_with_base`), so the target costs the output heads only.
The divergence is averaged like MusicGen's cross entropy (`MusicGenSolver._compute_cross_entropy`):
per codebook over its valid tokens (`padding_mask & model_output.mask`), then over codebooks.
It is computed in float32 whatever the autocast dtype of the logits.
"""
import typing as tp

import torch
import torch.nn.functional as F


def kl_from_base(logits: torch.Tensor, base_logits: torch.Tensor, mask: torch.Tensor
                 ) -> tp.Tuple[torch.Tensor, tp.List[torch.Tensor]]:
    """KL(p_base || p_extended) in nats per valid token, averaged over codebooks.

    Args:
        logits (torch.Tensor): the extended model's logits [B, K, T, card] (with gradient).
        base_logits (torch.Tensor): the frozen base's logits [B, K, T, card] (no gradient).
        mask (torch.Tensor): valid tokens [B, K, T] (bool); invalid positions hold NaN logits.
    Returns:
        (kl averaged over codebooks (scalar), kl per codebook (detached list of K scalars)).
        A codebook without a valid token counts 0.
    """
    assert logits.shape == base_logits.shape, (logits.shape, base_logits.shape)
    assert mask.shape == logits.shape[:-1], (mask.shape, logits.shape)
    num_codebooks = logits.shape[1]
    total = torch.zeros([], device=logits.device, dtype=torch.float32)
    per_codebook: tp.List[torch.Tensor] = []
    for k in range(num_codebooks):
        valid = mask[:, k]  # [B, T]
        log_p = F.log_softmax(logits[:, k][valid].float(), dim=-1)  # [N, card]
        log_q = F.log_softmax(base_logits[:, k][valid].detach().float(), dim=-1)  # [N, card]
        if log_p.shape[0]:
            kl_k = F.kl_div(log_p, log_q, log_target=True, reduction='batchmean')
        else:
            kl_k = log_p.sum()  # 0, still attached to the graph
        total = total + kl_k
        per_codebook.append(kl_k.detach())
    return total / num_codebooks, per_codebook
