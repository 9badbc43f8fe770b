"""How the demo's tiny EnCodec learns: AudioCraft's `EncodecModel` (SEANet, residual vector
quantiser) and AudioCraft's reconstruction losses, in a plain loop with two stages.

AudioCraft's `CompressionSolver` with the same model and losses (multi-scale mel + L1, balanced)
stays on a trivial minimum on this music for at least 1000 updates: the decoder plays one fixed
spectrum, the same for every clip (its mel distance to the input stops near 0.55, every
codebook uses 1 to 12 codes). Two things in the untrained model cause it, both measured:

1. At SEANet's initialisation a quiet input (the score set's -20 dBFS) leaves the encoder
   almost constant in time, and the decoder's own output is about as loud as the music, so the
   first thing every loss teaches is to silence or flatten the output. Starting with the first
   encoder convolution 4x louder and the last decoder convolution 4x quieter (`INPUT_GAIN`)
   lets the waveform L1 loss lock onto the input within about 100 updates.
2. k-means initialises the codebooks on the first batch's encoder outputs, which are then
   nearly constant, so every frame lands on one code. Stage 1 trains the autoencoder without a
   quantiser (`no_quant`); stage 2 adds the residual quantiser, whose k-means then sees an
   encoder that carries the music.

The multi-scale mel loss joins after `MEL_START` updates: before the output follows the input,
it only pulls towards the average spectrum.
"""
from dataclasses import asdict, dataclass
import logging
import random
import time
import typing as tp

from audiocraft.losses import MultiScaleMelSpectrogramLoss
from audiocraft.models import builders
from audiocraft.models.encodec import EncodecModel
import numpy as np
from omegaconf import DictConfig, OmegaConf
import torch

logger = logging.getLogger(__name__)

INPUT_GAIN = 4.0
MEL_START = 150


@dataclass
class CodecRecipe:
    """Everything that sets how the codec trains (written into the shipped recipe)."""
    autoencoder_updates: int = 400   # stage 1, without the quantiser
    updates: int = 1200              # stage 1 + stage 2
    batch_size: int = 16
    segment: float = 1.0             # seconds per example
    lr: float = 1e-3
    l1_weight: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def mel_distance(sample_rate: int) -> MultiScaleMelSpectrogramLoss:
    """AudioCraft's multi-scale mel loss with the demo codec config's settings (its `msspec`)."""
    return MultiScaleMelSpectrogramLoss(sample_rate=sample_rate, range_start=6, range_end=11, n_mels=64,
                                        f_min=64, normalized=True, alphas=False, floor_level=1e-5)


def _model(cfg: DictConfig, quantizer: str) -> EncodecModel:
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.set_struct(cfg, False)
    cfg.encodec.quantizer = quantizer
    if quantizer == 'no_quant':
        cfg.no_quant = {}
    return builders.get_compression_model(cfg)


def train_codec(cfg: DictConfig, clips: tp.Sequence[np.ndarray], recipe: CodecRecipe,
                evaluate: tp.Optional[torch.Tensor] = None,
                log: tp.Callable[[str], None] = logger.info) -> EncodecModel:
    """An EnCodec built from `cfg` (a compression config, `builders.get_compression_model`'s keys)
    trained on random `recipe.segment`-second excerpts of `clips` (mono float arrays at
    `cfg.sample_rate`); `evaluate` [B, 1, T] held-out clips, if given, are scored every 200 updates.
    """
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    sample_rate = int(cfg.sample_rate)
    segment = int(recipe.segment * sample_rate)
    if not 0 < recipe.autoencoder_updates < recipe.updates:
        raise ValueError(f"The recipe needs 0 < autoencoder_updates < updates, got {recipe.autoencoder_updates} "
                         f"and {recipe.updates}: the quantiser joins after stage 1.")
    clips = [clip for clip in clips if len(clip) > segment]
    if not clips:
        raise ValueError(f"No training clip is longer than {recipe.segment:g} s.")
    mel = mel_distance(sample_rate)
    model = _model(cfg, 'no_quant')
    with torch.no_grad():
        model.encoder.model[0].conv.conv.weight_g.mul_(INPUT_GAIN)
        model.decoder.model[-1].conv.conv.weight_g.div_(INPUT_GAIN)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    start = time.monotonic()
    for update in range(recipe.updates):
        if evaluate is not None and update % 200 == 0:
            log(f"update {update}: held-out mel distance {held_out_mel(model, evaluate, mel):.3f} "
                f"({time.monotonic() - start:.0f} s)")
        if update == recipe.autoencoder_updates:
            state = {k: v for k, v in model.state_dict().items() if not k.startswith('quantizer.')}
            model = _model(cfg, 'rvq')
            model.load_state_dict(state, strict=False)  # the codebooks: k-means on the next training batch
            optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
        model.train()
        batch = []
        for _ in range(recipe.batch_size):
            clip = clips[rng.randrange(len(clips))]
            offset = rng.randrange(len(clip) - segment)
            batch.append(clip[offset:offset + segment])
        x = torch.from_numpy(np.stack(batch).astype(np.float32))[:, None]
        result = model(x)
        loss = recipe.l1_weight * (result.x - x).abs().mean()
        if update >= MEL_START:
            loss = loss + mel(result.x, x)
        if result.penalty is not None:
            loss = loss + result.penalty
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def held_out_mel(model: EncodecModel, wav: torch.Tensor, mel: tp.Optional[MultiScaleMelSpectrogramLoss] = None
                 ) -> float:
    """Mel distance (`mel_distance`) between `wav` [B, 1, T] and `model`'s reconstruction of it."""
    mel = mel or mel_distance(model.sample_rate)
    was_training = model.training
    model.eval()
    distance = float(mel(model(wav).x, wav))
    model.train(was_training)
    return distance
