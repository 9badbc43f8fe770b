"""Tiny but real MusicGen models, built from AudioCraft's own classes and configs.

Used by the tests, the demo and the benchmarks: no download, CPU-friendly. Every model is
built by `audiocraft.models.builders` from an `xp.cfg`-style config, exactly like
`audiocraft.models.loaders` builds a pretrained model, so `save_exported` writes the same
layout as a Hugging Face snapshot of `facebook/musicgen-small` and stock
`MusicGen.get_pretrained(dir)` loads it.

Flavours:
    - ``text``: text-to-music, mono, text through cross-attention (like musicgen-small).
    - ``melody``: text + chroma melody prepended to the input (like musicgen-melody).
    - ``stereo``: text-to-music with interleaved stereo codebooks (like musicgen-stereo-small).
"""
from contextlib import contextmanager, nullcontext
from pathlib import Path
import typing as tp

from omegaconf import DictConfig, OmegaConf
import torch

from ..io.exported_layout import exported_package, write_exported
from .bases import assemble_musicgen

FLAVOURS = ('text', 'melody', 'stereo')


def tiny_lm_config(flavour: str = 'text', dim: int = 32, num_heads: int = 4, num_layers: int = 2,
                   card: int = 256, n_q: int = 4, sample_rate: int = 16000,
                   segment_duration: float = 30.0, **transformer_overrides) -> DictConfig:
    """`xp.cfg` of a MusicGen LM at a tiny scale, readable by `builders.get_lm_model`."""
    if flavour not in FLAVOURS:
        raise ValueError(f"Unknown flavour {flavour!r}: choose one of {FLAVOURS}.")
    stereo = flavour == 'stereo'
    if stereo:
        n_q = 2 * n_q
    delays = [k // 2 for k in range(n_q)] if stereo else list(range(n_q))
    conditioners: tp.Dict[str, tp.Any] = {
        'description': {'model': 'lut', 'lut': {'n_bins': 256, 'dim': dim, 'tokenizer': 'noop'}},
    }
    fuser = {'cross_attention_pos_emb': False, 'cross_attention_pos_emb_scale': 1,
             'sum': [], 'prepend': [], 'cross': ['description'], 'input_interpolate': []}
    if flavour == 'melody':
        conditioners['self_wav'] = {'model': 'chroma_stem', 'chroma_stem': {
            'sample_rate': sample_rate, 'n_chroma': 12, 'radix2_exp': 10, 'argmax': True,
            'match_len_on_eval': False, 'eval_wavs': None, 'n_eval_wavs': 0, 'cache_path': None}}
        fuser['prepend'] = ['self_wav']
    transformer_lm = {
        'dim': dim, 'num_heads': num_heads, 'num_layers': num_layers, 'hidden_scale': 4,
        'n_q': n_q, 'card': card, 'dropout': 0.0, 'emb_lr': None, 'activation': 'gelu',
        'norm_first': True, 'bias_ff': False, 'bias_attn': False, 'bias_proj': False,
        'past_context': None, 'causal': True, 'custom': False, 'memory_efficient': True,
        'attention_as_float32': False, 'layer_scale': None, 'positional_embedding': 'sin',
        'xpos': False, 'checkpointing': 'none', 'weight_init': 'gaussian',
        'depthwise_init': 'current', 'zero_bias_init': True,
    }
    transformer_lm.update(transformer_overrides)
    cfg = {
        'lm_model': 'transformer_lm', 'device': 'cpu', 'dtype': 'float32',
        'sample_rate': sample_rate, 'channels': 2 if stereo else 1,
        'dataset': {'segment_duration': segment_duration},
        'transformer_lm': transformer_lm,
        'codebooks_pattern': {'modeling': 'delay',
                              'delay': {'delays': delays, 'flatten_first': 0, 'empty_initial': 0}},
        'classifier_free_guidance': {'training_dropout': 0.2, 'inference_coef': 3.0},
        'attribute_dropout': {},
        'fuser': fuser,
        'conditioners': conditioners,
        'interleave_stereo_codebooks': {'use': stereo, 'per_timestep': False},
    }
    return OmegaConf.create(cfg)


def tiny_compression_config(sample_rate: int = 16000, n_q: int = 4, card: int = 256) -> DictConfig:
    """`xp.cfg` of a mono EnCodec at 50 frames/s (hop 320), readable by `builders.get_compression_model`."""
    return OmegaConf.create({
        'compression_model': 'encodec', 'device': 'cpu', 'dtype': 'float32',
        'sample_rate': sample_rate, 'channels': 1,
        'encodec': {'autoencoder': 'seanet', 'quantizer': 'rvq', 'sample_rate': sample_rate,
                    'channels': 1, 'causal': False, 'renormalize': False},
        'seanet': {'dimension': 16, 'channels': 1, 'causal': False, 'n_filters': 4,
                   'n_residual_layers': 1, 'ratios': [8, 5, 4, 2], 'lstm': 0,
                   'encoder': {}, 'decoder': {'trim_right_ratio': 1.0}},
        'rvq': {'n_q': n_q, 'bins': card, 'q_dropout': False, 'decay': 0.99,
                'kmeans_init': False, 'threshold_ema_dead_code': 2},
    })


def random_htdemucs():
    """An `HTDemucs` with fixed random weights and the pretrained model's sources, for offline tests."""
    from demucs.htdemucs import HTDemucs
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return HTDemucs(sources=['drums', 'bass', 'other', 'vocals'], channels=8, depth=2, segment=1,
                        nfft=512, t_layers=0, bottom_channels=0).eval()


@contextmanager
def offline_demucs():
    """Make AudioCraft's chroma conditioner use `random_htdemucs` instead of downloading htdemucs.

    Only for tests and the offline demo: the code users run keeps the real download.
    """
    from demucs import pretrained
    original = pretrained.get_model
    pretrained.get_model = lambda name, *args, **kwargs: random_htdemucs()
    try:
        yield
    finally:
        pretrained.get_model = original


def build_from_configs(lm_cfg: DictConfig, compression_cfg: DictConfig):
    """Build (compression_model, lm) with AudioCraft's builders, both in eval mode with `.cfg` set.

    The compression model is returned mono: like `MusicGen.get_pretrained`, `MusicGen` itself
    wraps it for interleaved stereo codebooks when `lm.cfg` asks for it.
    """
    from audiocraft.models import builders
    # Only the chroma conditioner (melody flavour) needs demucs: text models build without it.
    melody = any(conditioner.model == 'chroma_stem' for conditioner in lm_cfg.conditioners.values())
    with offline_demucs() if melody else nullcontext():
        lm = builders.get_lm_model(lm_cfg).eval()
    lm.cfg = lm_cfg
    compression_model = builders.get_compression_model(compression_cfg).eval()
    compression_model.cfg = compression_cfg
    return compression_model, lm


def build_tiny_musicgen(flavour: str = 'text', seed: int = 0, **lm_overrides):
    """A randomly initialised tiny `MusicGen` of the given flavour, deterministic from `seed`."""
    lm_cfg = tiny_lm_config(flavour, **lm_overrides)
    compression_cfg = tiny_compression_config(
        lm_cfg.sample_rate, n_q=lm_cfg.transformer_lm.n_q // lm_cfg.channels,
        card=lm_cfg.transformer_lm.card)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        compression_model, lm = build_from_configs(lm_cfg, compression_cfg)
    return assemble_musicgen(f'tiny-{flavour}', compression_model, lm)


def save_exported(model, directory: tp.Union[str, Path]) -> Path:
    """Write `model` in AudioCraft's exported layout (a Hugging Face MusicGen snapshot), as a whole."""
    compression_model = getattr(model.compression_model, 'model', model.compression_model)
    return write_exported(directory, exported_package(OmegaConf.to_yaml(model.lm.cfg), model.lm.state_dict()),
                          exported_package(OmegaConf.to_yaml(compression_model.cfg), compression_model.state_dict()))
