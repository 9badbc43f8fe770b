"""ExtendedMusicGen: `MusicGen` with an `ExtendedLMModel`, used exactly like MusicGen.

Every generation mode is `MusicGen`'s own (`generate`, `generate_unconditional`,
`generate_continuation`, `generate_with_chroma`, long generation with `extend_stride`,
`two_step_cfg`, progress callbacks): only loading, saving and the `extension_scale` knob are new.
"""
from pathlib import Path
import threading
import typing as tp

from omegaconf import OmegaConf
import torch

from audiocraft.models import MusicGen
from audiocraft.models.encodec import CompressionModel

from .. import __version__
from .checkpoints import (EXTENDED_FORMAT, EXTENDED_FORMAT_VERSION, CheckpointError, assemble_musicgen,
                          atomic_save, build_compression_model, build_lm, compression_package, default_device,
                          is_exported_reference, is_extended_package, load_base_musicgen, read_torch_file,
                          weights_hash)
from .extended_lm import ExtendedLMModel
from .inputs import (GenerationInputError, check_descriptions, check_duration, check_num_samples,
                     check_waveform)
from .layers import base_layer_config, check_extension_scale, residual_branch_outputs


def _mono(compression_model: CompressionModel) -> CompressionModel:
    """The wrapped model of an interleaved-stereo compression model (MusicGen wraps it again)."""
    return getattr(compression_model, 'model', compression_model)


class ExtendedMusicGen(MusicGen):
    """MusicGen whose language model is a frozen base plus N new layers.

    Args:
        name (str): name of the model.
        compression_model (CompressionModel): the base's compression model.
        lm (ExtendedLMModel): the extended language model.
        max_duration (float, optional): as for `MusicGen`.
        base_reference (str, optional): where the base comes from (path or Hugging Face id);
            what adapter-only files point to.
        base_hash (str, optional): `weights_hash` of the base LM; computed when not given.
    """
    def __init__(self, name: str, compression_model: CompressionModel, lm: ExtendedLMModel,
                 max_duration: tp.Optional[float] = None, base_reference: tp.Optional[str] = None,
                 base_hash: tp.Optional[str] = None):
        if not isinstance(lm, ExtendedLMModel):
            raise TypeError(f"lm must be an ExtendedLMModel, got {type(lm).__name__}: "
                            "use ExtendedMusicGen.from_base to extend a MusicGen.")
        self._generation_lock = threading.Lock()
        super().__init__(name, compression_model, lm, max_duration)
        self.base_reference = base_reference
        self.base_hash = base_hash or weights_hash(lm.base_state_dict())

    @classmethod
    def from_base(cls, base: tp.Any, num_additional_layers: int = 12, extension_scale: float = 1.0,
                  device: tp.Optional[str] = None, **layer_overrides: tp.Any) -> 'ExtendedMusicGen':
        """Extend a pretrained MusicGen with new layers (see `checkpoints` for accepted bases).

        Args:
            base: a `MusicGen`, a Hugging Face id, an exported directory, an AudioCraft
                `checkpoint.th`, or a file written by `save` (extended again, as L + N layers).
            num_additional_layers (int): number of new layers.
            extension_scale (float): initial strength of the new layers.
            device (str, optional): where to load a base given by name; default cuda if available.
            **layer_overrides: see `ExtendedLMModel`.
        """
        musicgen = load_base_musicgen(base, device)
        lm = ExtendedLMModel(musicgen.lm, num_additional_layers, extension_scale, **layer_overrides)
        reference = str(base) if isinstance(base, (str, Path)) else None
        if isinstance(base, MusicGen) and not isinstance(base, ExtendedMusicGen) \
                and is_exported_reference(base.name):
            reference = base.name  # e.g. MusicGen.get_pretrained('facebook/musicgen-small')
        return cls(musicgen.name, _mono(musicgen.compression_model), lm,
                   max_duration=musicgen.max_duration, base_reference=reference)

    @staticmethod
    def get_pretrained(name: str, device: tp.Optional[str] = None,
                       base: tp.Any = None) -> 'ExtendedMusicGen':  # type: ignore[override]
        """Load a file written by `save`.

        Args:
            name (str or Path): the file.
            device (str, optional): default cuda if available.
            base (optional): for an adapter-only file, the base to use instead of the one it
                refers to (e.g. after moving files); its hash must still match.
        """
        device = device or default_device()
        pkg = read_torch_file(name, 'ExtendedMusicGen checkpoint')
        if not is_extended_package(pkg):
            raise CheckpointError(f"{name} was not written by ExtendedMusicGen.save. For a plain MusicGen "
                                  "checkpoint use ExtendedMusicGen.from_base(path) to extend it.")
        if pkg['format_version'] > EXTENDED_FORMAT_VERSION:
            raise CheckpointError(f"{name} has format version {pkg['format_version']}, newer than this "
                                  f"audiocraft-ext reads ({EXTENDED_FORMAT_VERSION}): upgrade audiocraft-ext.")
        base_info = pkg['base']
        if 'lm_state' in base_info and base is None:
            lm = build_lm(base_info['lm_cfg'], base_info['lm_state'], device)
            compression_model = build_compression_model(base_info['compression'], device)
            musicgen = assemble_musicgen(pkg['name'], compression_model, lm, pkg['max_duration'])
        else:
            source = base if base is not None else base_info['reference']
            if source is None:
                raise CheckpointError(f"{name} is adapter-only and does not say where its base is: "
                                      "pass base=... (a MusicGen, path or Hugging Face id).")
            musicgen = load_base_musicgen(source, device)
        return ExtendedMusicGen.from_extension(
            musicgen, pkg['extension']['config'], pkg['extension']['state'], base_info['hash'],
            base_reference=base_info['reference'], source=str(name), name=pkg['name'],
            max_duration=pkg['max_duration'],
            base_description=base_info['reference'] if base is None else 'given')

    @classmethod
    def from_extension(cls, musicgen: MusicGen, config: tp.Dict[str, tp.Any],
                       state: tp.Mapping[str, torch.Tensor], base_hash: str,
                       base_reference: tp.Optional[str], source: str, name: tp.Optional[str] = None,
                       max_duration: tp.Optional[float] = None,
                       base_description: tp.Optional[str] = None) -> 'ExtendedMusicGen':
        """Trained new layers (`extension_config` and state dict) put back on their base.

        Refuses a base whose `weights_hash` is not `base_hash`, naming both hashes.

        Args:
            musicgen (MusicGen): the base.
            config (dict): `ExtendedLMModel.extension_config` of the trained model.
            state (dict): `ExtendedLMModel.extension_state_dict()` of the trained model.
            base_hash (str): hash of the base the layers were trained on.
            base_reference (str, optional): where that base comes from, kept for adapter saves.
            source (str): what the layers were read from, for error messages.
        """
        found = weights_hash(musicgen.lm.state_dict())
        if found != base_hash:
            raise CheckpointError(
                f"{source} was trained on the base with hash {base_hash}, but the base "
                f"{base_description or base_reference} has hash {found}. "
                "Load it onto the base it was trained on (or retrain the extension for this base).")
        lm = ExtendedLMModel(musicgen.lm, config['num_additional_layers'], config['extension_scale'],
                             **config['layer_config'])
        lm.load_extension_state_dict(state)
        return cls(name or musicgen.name, _mono(musicgen.compression_model), lm,
                   max_duration=max_duration or musicgen.max_duration, base_reference=base_reference,
                   base_hash=base_hash)

    @property
    def extension_scale(self) -> float:
        return self.lm.extension_scale

    @extension_scale.setter
    def extension_scale(self, scale: float) -> None:
        self.lm.extension_scale = scale

    def set_generation_params(self, *args: tp.Any, extension_scale: tp.Optional[float] = None,
                              **kwargs: tp.Any) -> None:
        """`MusicGen.set_generation_params`, plus `extension_scale` (0.0 = base, 1.0 = as trained)."""
        if extension_scale is not None:
            check_extension_scale(extension_scale)  # before changing anything: all or nothing
        check_duration('duration', kwargs.get('duration'))
        check_duration('extend_stride', kwargs.get('extend_stride'))
        if kwargs.get('extend_stride', 0) >= self.max_duration:
            raise GenerationInputError(f"extend_stride={kwargs['extend_stride']} must be shorter than the "
                                       f"model's max_duration ({self.max_duration} s).")
        super().set_generation_params(*args, **kwargs)
        if extension_scale is not None:
            self.extension_scale = extension_scale

    def generate(self, descriptions: tp.List[tp.Optional[str]], progress: bool = False,
                 return_tokens: bool = False):
        check_descriptions(descriptions)
        return super().generate(descriptions, progress=progress, return_tokens=return_tokens)

    def generate_unconditional(self, num_samples: int, progress: bool = False, return_tokens: bool = False):
        check_num_samples(num_samples)
        return super().generate_unconditional(num_samples, progress=progress, return_tokens=return_tokens)

    def generate_continuation(self, prompt: torch.Tensor, prompt_sample_rate: int,
                              descriptions: tp.Optional[tp.List[tp.Optional[str]]] = None,
                              progress: bool = False, return_tokens: bool = False):
        check_waveform('prompt', prompt, prompt_sample_rate, max_seconds=self.duration)
        if descriptions is not None:
            check_descriptions(descriptions)
            batch = prompt.shape[0] if prompt.dim() == 3 else 1
            if len(descriptions) != batch:
                raise GenerationInputError(f"{len(descriptions)} descriptions for {batch} prompt(s): "
                                           "give one per prompt.")
        return super().generate_continuation(prompt, prompt_sample_rate, descriptions, progress=progress,
                                             return_tokens=return_tokens)

    def generate_with_chroma(self, descriptions: tp.List[tp.Optional[str]], melody_wavs: tp.Any,
                             melody_sample_rate: int, progress: bool = False, return_tokens: bool = False):
        check_descriptions(descriptions)
        is_list = not isinstance(melody_wavs, torch.Tensor)
        melodies = list(melody_wavs) if is_list else [melody_wavs]
        for index, melody in enumerate(melodies):
            if melody is not None:
                check_waveform(f'melody_wavs[{index}]', melody, melody_sample_rate, list_item=is_list)
        count = melody_wavs.shape[0] if isinstance(melody_wavs, torch.Tensor) and melody_wavs.dim() == 3 \
            else len(melodies)
        if count != len(descriptions):
            raise GenerationInputError(f"{count} melodies for {len(descriptions)} descriptions: give one per "
                                       "description (None for no melody).")
        return super().generate_with_chroma(descriptions, melody_wavs, melody_sample_rate, progress=progress,
                                            return_tokens=return_tokens)

    def _generate_tokens(self, *args: tp.Any, **kwargs: tp.Any) -> torch.Tensor:
        # The layers' streaming state (KV caches) lives in the modules: one generation at a time.
        with self._generation_lock:
            return super()._generate_tokens(*args, **kwargs)

    def save(self, path: tp.Union[str, Path], include_base: bool = True) -> Path:
        """Write a file `get_pretrained` loads, atomically.

        Self-contained by default (base LM, compression model, extension, configs). With
        `include_base=False` only the extension and a reference to the base (path or id plus
        `weights_hash`), which refuses to load onto a different base.
        """
        lm = self.lm
        base_info: tp.Dict[str, tp.Any] = {'reference': self.base_reference, 'hash': self.base_hash}
        if include_base:
            base_info['lm_cfg'] = OmegaConf.to_yaml(self._lm_cfg())
            base_info['lm_state'] = lm.base_state_dict()
            base_info['compression'] = compression_package(self.compression_model, self.base_reference)
        elif self.base_reference is None:
            raise CheckpointError("This model's base was given in memory, so an adapter-only file could not "
                                  "say where it is: extend a base given by path or id, or save with "
                                  "include_base=True.")
        pkg = {
            'format': EXTENDED_FORMAT, 'format_version': EXTENDED_FORMAT_VERSION,
            'audiocraft_ext_version': __version__, 'name': self.name, 'max_duration': self.max_duration,
            'base': base_info,
            'extension': {'config': lm.extension_config, 'state': lm.extension_state_dict()},
        }
        return atomic_save(pkg, path)

    def _lm_cfg(self):
        cfg = getattr(self.lm, 'cfg', None)
        if cfg is None:
            raise CheckpointError("The base LM carries no xp.cfg, so its architecture cannot be written down: "
                                  "load the base through ExtendedMusicGen.from_base(path_or_id).")
        return cfg

    def merged_lm_package(self) -> tp.Tuple[tp.Any, tp.Dict[str, torch.Tensor]]:
        """(xp.cfg, state dict) of a plain `LMModel` with L + N layers equal to this model.

        `extension_scale` is folded into the weights. Only possible when the new layers have
        the base layers' architecture (`checkpointing`, a training-memory setting, may differ),
        so never on a post-norm base (the new layers are pre-norm).
        """
        lm = self.lm
        expected = base_layer_config(lm.base_transformer)
        differing = sorted(key for key in expected
                           if key != 'checkpointing' and expected[key] != lm.layer_config[key])
        if differing:
            post_norm = (" (the base is post-norm; new layers are always pre-norm)"
                         if 'norm_first' in differing else "")
            raise CheckpointError(f"The new layers differ from the base layers in {differing}{post_norm}, so base "
                                  "+ new layers is not a stock LMModel and cannot be exported to AudioCraft's "
                                  "layout. Use save() instead.")
        cfg = OmegaConf.create(OmegaConf.to_container(self._lm_cfg()))
        cfg.transformer_lm.num_layers = lm.num_base_layers + lm.num_additional_layers
        state = dict(lm.base_state_dict())
        for index, layer in enumerate(lm.extension.layers):
            scaled = {id(linear.weight) for linear in residual_branch_outputs(layer)} | \
                     {id(linear.bias) for linear in residual_branch_outputs(layer) if linear.bias is not None}
            named = dict(layer.named_parameters())
            prefix = f'transformer.layers.{lm.num_base_layers + index}.'
            for key, value in layer.state_dict().items():
                parameter = named.get(key)
                if parameter is not None and id(parameter) in scaled:
                    value = value * lm.extension_scale
                state[prefix + key.replace('.layer_scale.scale', '.scale')] = value.detach().clone()
        return cfg, state

    def merged_musicgen(self) -> MusicGen:
        """A plain `MusicGen` (L + N layers) equal to this model, e.g. to extend it again."""
        cfg, state = self.merged_lm_package()
        lm = build_lm(cfg, state, self.device)
        return assemble_musicgen(self.name, _mono(self.compression_model), lm, self.max_duration)

    def export_audiocraft(self, directory: tp.Union[str, Path]) -> Path:
        """Write AudioCraft's exported layout, loadable by stock `MusicGen.get_pretrained(directory)`.

        `state_dict.bin` holds the merged L + N layer LM, `compression_state_dict.bin` the base's
        compression model; both with the keys `xp.cfg`, `best_state`, `version`, `exported`.
        """
        import audiocraft
        directory = Path(directory)
        cfg, state = self.merged_lm_package()
        atomic_save(compression_package(self.compression_model, self.base_reference),
                    directory / 'compression_state_dict.bin')
        atomic_save({'xp.cfg': OmegaConf.to_yaml(cfg), 'best_state': state,
                     'version': audiocraft.__version__, 'exported': True}, directory / 'state_dict.bin')
        return directory

