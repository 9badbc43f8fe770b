"""What the demo's extension run starts from: the tiny pretrained MusicGen shipped with the package
(`models.shipped`, made by scripts/make_pretrained.py), written once into AudioCraft's exported
layout in the cache and its tokenizer checked on the demo's held-out clips."""
from pathlib import Path
import typing as tp

from omegaconf import OmegaConf

from ..io.exported_layout import COMPRESSION_FILE, exported_package, read_exported_file, write_exported
from ..io.torch_files import read_torch_file
from ..models.bases import build_compression_model
from ..models.codec_health import check_codec_health
from ..data.score_domains import DOMAINS
from ..models.shipped import export_pretrained, read_recipe
from .artefacts import DEMO_VERSION, key, mark_done, read_clips, reuse_or_clear, split_paths, stack_clips
from .progress import Steps


def pretrained_base(cache: Path, data: Path, folder: Path, no_cache: bool, steps: Steps) -> tp.Tuple[Path, dict]:
    """The pretrained `folder` (codec + base LM, `models.shipped`) as an exported MusicGen directory
    in the cache, and its codec's usage on both domains' held-out clips (`check_codec_health`)."""
    recipe = read_recipe(folder)
    params = {'version': DEMO_VERSION, 'codec': recipe['codec']['sha256'], 'base_lm': recipe['base_lm']['sha256']}
    root = cache / f'base-{key(params)}'
    exported = root / 'exported'
    info = reuse_or_clear(root, exported, no_cache, steps)
    if not info:
        export_pretrained(exported, folder)
        info = {**params, 'cached': False}
        mark_done(root, params)
    codec = build_compression_model(read_exported_file(exported / COMPRESSION_FILE), 'cpu')
    usage = check_codec_health(codec, stack_clips(read_clips(split_paths(data, DOMAINS, 'evaluate'))),
                               f"of {folder}")
    return exported, {**info, 'folder': str(folder),
                      'codes_used': [u.used for u in usage], 'perplexity': [round(u.perplexity, 1) for u in usage]}


def export_base(checkpoint: Path, codec: Path, exported: Path, max_duration: float = 30.0) -> Path:
    """MusicGenSolver's best state and the codec in AudioCraft's exported layout, as `export_lm` and
    `export_pretrained_compression_model` write them, with `dataset.segment_duration` at least 30 s.

    `MusicGen.__init__` takes its maximum generation window from that key and immediately sets
    `extend_stride=18`, which it asserts is shorter: stock `MusicGen.get_pretrained` cannot load
    an LM exported from 2 s segments. The window is only a limit for generation (the sinusoidal
    positions have no maximum); the demo generates clips no longer than the training segments.
    """
    pkg = read_torch_file(checkpoint, 'MusicGenSolver checkpoint')
    cfg = OmegaConf.create(OmegaConf.to_yaml(pkg['xp.cfg']))
    cfg.dataset.segment_duration = max(float(cfg.dataset.segment_duration), max_duration)
    lm = exported_package(OmegaConf.to_yaml(cfg), pkg['best_state']['model'])  # the demo trains without FSDP
    return write_exported(exported, lm, read_exported_file(codec))
