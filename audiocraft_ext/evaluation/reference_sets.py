"""The reference set of the evaluate stage (`evaluate.reference_dset`): where it is, and its loader.

The reference set is the old domain, the one the base knew: the extended model's cross entropy on
it against the base's measures forgetting.
"""
import copy
from pathlib import Path

from audiocraft.solvers import builders
from dora import git_save
import omegaconf

from .. import CONFIG_DIR


def resolve_reference_dset(value: str, cfg: omegaconf.DictConfig) -> str:
    """`evaluate.reference_dset` -> a manifest path for AudioCraft's datasets.

    Accepts a manifest folder (holding data.jsonl or data.jsonl.gz) or file, an egs root (its
    `evaluate/` split is used, e.g. `egs/old`), or the name of a dset config (`audio/NAME`:
    its `datasource.evaluate`). Relative paths are relative to where the command started.
    """
    path = Path(git_save.to_absolute_path(str(Path(str(value)).expanduser())))
    if path.is_file():
        return str(path)
    if path.is_dir():
        if (path / 'data.jsonl').exists() or (path / 'data.jsonl.gz').exists():
            return str(path)
        if (path / 'evaluate').is_dir():
            return resolve_reference_dset(str(path / 'evaluate'), cfg)
        raise FileNotFoundError(f"evaluate.reference_dset={value}: {path} holds neither data.jsonl nor an "
                                "evaluate/ split.")
    config = CONFIG_DIR / 'dset' / f'{value}.yaml'
    if config.exists():
        dset = omegaconf.OmegaConf.load(config)
        merged = omegaconf.OmegaConf.merge(cfg, dset)
        manifest = merged.datasource.get('evaluate')
        if manifest is None:
            raise ValueError(f"evaluate.reference_dset={value}: {config} sets no datasource.evaluate.")
        return git_save.to_absolute_path(str(manifest))
    raise FileNotFoundError(f"evaluate.reference_dset={value} is neither a manifest folder, an egs root, nor a "
                            f"dset config ({config} does not exist).")


def reference_loader(cfg: omegaconf.DictConfig, manifest: str, dataset_type: builders.DatasetType):
    """A loader over `manifest` built like the evaluate loader of `cfg` (same dataset settings)."""
    cfg = copy.deepcopy(cfg)
    with omegaconf.open_dict(cfg):
        cfg.datasource = {'max_sample_rate': cfg.datasource.max_sample_rate,
                          'max_channels': cfg.datasource.max_channels, 'evaluate': manifest}
        cfg.execute_only = 'evaluate'
    return builders.get_audio_datasets(cfg, dataset_type=dataset_type)['evaluate']
