"""Does a clip sound like the old domain or the new one? A measure a listener can check.

A logistic regression on the statistics of a clip's log-mel spectrogram (per band: mean and
standard deviation over time, 2 x 40 numbers: timbre, register and how much the sound moves;
the clip's overall level removed, as generated clips are peak-normalised and real ones are not),
fitted on real clips of both domains. Its score of a clip is the log-odds that the clip is from
the new domain (positive: sounds new, negative: sounds old). Averaged over the clips a model
generated for new-domain captions, it says how new-domain the model sounds: the demo reports it
for the base and the extended model side by side, with the average scores of held-out real clips
of each domain as the scale and the classifier's accuracy on them. The log-odds and not the
probability: a tiny model's clips are far from every real clip, where probabilities round to 0
or 1 while the log-odds still tell which side a clip is nearer.
"""
from dataclasses import dataclass, field
import typing as tp

import torch
import torchaudio

N_MELS = 40


def clip_features(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """[B, 2 * N_MELS] log-mel statistics of `wav` [B, 1, T] (mono)."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=N_MELS)
    logmel = torch.log(mel(wav[:, 0].float()) + 1e-5)     # [B, N_MELS, frames]
    logmel = logmel - logmel.mean(dim=(1, 2), keepdim=True)
    return torch.cat([logmel.mean(-1), logmel.std(-1)], dim=1)


@dataclass
class DomainClassifier:
    """Standardised features -> log-odds of the new domain; `accuracy` and the mean scores per
    domain (`reference`) on held-out real clips."""
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    sample_rate: int
    accuracy: float = float('nan')
    reference: tp.Dict[str, float] = field(default_factory=dict)

    def score(self, wav: torch.Tensor) -> torch.Tensor:
        """[B] log-odds that each clip of `wav` [B, 1, T] is from the new domain."""
        x = (clip_features(wav, self.sample_rate) - self.mean) / self.std
        return x @ self.weight + self.bias


def fit_domain_classifier(old: torch.Tensor, new: torch.Tensor, sample_rate: int,
                          held_out: tp.Optional[tp.Tuple[torch.Tensor, torch.Tensor]] = None,
                          l2: float = 1e-2) -> DomainClassifier:
    """Fit on `old` and `new` real clips ([B, 1, T] each); `held_out` (old, new) sets its accuracy."""
    features = torch.cat([clip_features(old, sample_rate), clip_features(new, sample_rate)]).double()
    labels = torch.cat([torch.zeros(len(old)), torch.ones(len(new))]).double()
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn='strong_wolfe')

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, labels)
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    classifier = DomainClassifier(mean.float(), std.float(), weight.detach().float(), bias.detach().float(),
                                  sample_rate)
    if held_out is not None:
        old_scores, new_scores = (classifier.score(clips) for clips in held_out)
        correct = int((old_scores < 0).sum()) + int((new_scores >= 0).sum())
        classifier.accuracy = correct / (len(old_scores) + len(new_scores))
        classifier.reference = {'old': float(old_scores.mean()), 'new': float(new_scores.mean())}
    return classifier
