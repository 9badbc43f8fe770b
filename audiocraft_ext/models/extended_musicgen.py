"""ExtendedMusicGen: `MusicGen` with an `ExtendedLMModel`, used exactly like MusicGen.

Every generation mode is `MusicGen`'s own (`generate`, `generate_unconditional`,
`generate_continuation`, `generate_with_chroma`, long generation with `extend_stride`,
`two_step_cfg`, progress callbacks): only loading, saving and the `extension_scale` knob are new,
and `attach`: other extensions of the same base, chosen per call or per item (`extensions=`),
the base computed once for the whole batch.
"""
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
import inspect
import os
from pathlib import Path
import threading
import typing as tp

from omegaconf import OmegaConf
import torch

from audiocraft.models import MusicGen
from audiocraft.models.encodec import CompressionModel

from ..io import extension_files
from ..io.base_reference import SIG_PREFIX, BaseSource, is_hub_id, resolve_base, sig_checkpoint
from ..io.destinations import check_destination
from ..io.errors import CheckpointError, IntegrityError
from ..io.exported_layout import exported_package, write_exported
from ..io.hashing import weights_hash
from ..io.solver_checkpoints import read_solver_checkpoint
from .bases import assemble_musicgen, build_lm, compression_package, default_device, load_plain_base
from .extended_lm import ExtendedLMModel, FrozenBaseWithExtension
from .inputs import (GenerationInputError, check_descriptions, check_duration, check_num_samples,
                     check_sampling, check_waveform)
from .extension_config import ExtensionConfig
from .packages import embedded_base, extension_package, merged_lm_package, storage_dtype
from .tiny import build_tiny_musicgen

# MusicGen.set_generation_params's parameters in their positional order (use_sampling, top_k, ...).
GENERATION_PARAMS = tuple(inspect.signature(MusicGen.set_generation_params).parameters)[1:]

PathLike = tp.Union[str, Path]


def _mono(compression_model: CompressionModel) -> CompressionModel:
    """The wrapped model of an interleaved-stereo compression model (MusicGen wraps it again)."""
    return getattr(compression_model, 'model', compression_model)


class ExtendedMusicGen(MusicGen):
    """MusicGen whose language model is a frozen base plus N new layers.

    Which constructor for what:
        `from_base(base, N)`: a pretrained MusicGen with N new, untrained layers (what training starts from).
        `get_pretrained(name)`: a trained extension, from whatever holds one (`read_trained_extension`:
            `save`'s files and directories, Hugging Face repos, training runs), on its base.
        `from_solver_checkpoint(run, state)`: a training run in its best or last state.
        The constructor itself takes the parts, already built.

    Args:
        name (str): name of the model.
        compression_model (CompressionModel): the base's compression model.
        lm (ExtendedLMModel): the extended language model.
        max_duration (float, optional): as for `MusicGen`.
        base_reference (str, optional): where the base comes from (path or Hugging Face id);
            what extension-only files point to.
        base_hash (str, optional): `weights_hash` of the base LM; computed when not given.
    """
    def __init__(self, name: str, compression_model: CompressionModel, lm: ExtendedLMModel,
                 max_duration: tp.Optional[float] = None, base_reference: tp.Optional[str] = None,
                 base_hash: tp.Optional[str] = None):
        if not isinstance(lm, ExtendedLMModel):
            raise TypeError(f"lm must be an ExtendedLMModel, got {type(lm).__name__}: "
                            "use ExtendedMusicGen.from_base to extend a MusicGen.")
        self._generation_lock = threading.Lock()
        self._requested_routes = threading.local()  # `extensions=` of the call in progress, per thread
        super().__init__(name, compression_model, lm, max_duration)
        self.base_reference = base_reference
        self.base_hash = base_hash or weights_hash(lm.base_state_dict())

    @classmethod
    def from_base(cls, base: tp.Any, num_additional_layers: int = 12, extension_scale: float = 1.0,
                  device: tp.Optional[str] = None, dora_dir: tp.Optional[PathLike] = None,
                  revision: tp.Optional[str] = None, allow_pickle: bool = False,
                  **layer_overrides: tp.Any) -> 'ExtendedMusicGen':
        """Extend a pretrained MusicGen with new layers.

        Args:
            base: a `MusicGen` (or `ExtendedMusicGen`, merged first), or any reference
                `io.base_reference` resolves: Hugging Face id, exported directory, AudioCraft
                `checkpoint.th`, an extension written by `save`, a run of our solver (its folder,
                checkpoint or `//sig/SIG`); bases holding new layers are merged to L + N layers.
            num_additional_layers (int): number of new layers.
            extension_scale (float): initial strength of the new layers.
            device (str, optional): where to load a base given by reference; default cuda if available.
            dora_dir (str or Path, optional): the Dora folder `//sig/SIG` refers to.
            revision (str, optional): branch, tag or commit of a Hugging Face repo.
            allow_pickle (bool): accept a base checkpoint that only full unpickling can read, which can
                run code: only for files from a source you trust (docs/SECURITY.md).
            **layer_overrides: see `ExtendedLMModel`.
        """
        musicgen, reference = load_base(base, device, dora_dir, revision, allow_pickle)
        lm = ExtendedLMModel(musicgen.lm, num_additional_layers, extension_scale, **layer_overrides)
        return cls(musicgen.name, _mono(musicgen.compression_model), lm,
                   max_duration=musicgen.max_duration, base_reference=reference)

    @staticmethod
    def get_pretrained(name: PathLike, device: tp.Optional[str] = None, base: tp.Any = None,
                       revision: tp.Optional[str] = None, allow_pickle: bool = False,
                       dora_dir: tp.Optional[PathLike] = None) -> 'ExtendedMusicGen':  # type: ignore[override]
        """Load a trained extension: what `save` wrote (a directory, a `.safetensors` file, a legacy `.pt`
        file, a Hugging Face repo holding an extension directory) or a training run (its folder,
        `checkpoint.th` or `//sig/SIG` with `dora_dir`; its best state).

        Args:
            name: the extension (path, Hugging Face id or run).
            device (str, optional): default cuda if available.
            base (optional): the base to use instead of the one the extension refers to (e.g. after
                moving files); its hash must still match.
            revision (str, optional): branch, tag or commit of a Hugging Face repo.
            allow_pickle (bool): passed on to loading the base (see `from_base`).
            dora_dir (str or Path, optional): the Dora folder of `//sig/SIG` (the run's, or its base's).
        """
        if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
            raise TypeError(f"get_pretrained needs the extension to load (a path, or a Hugging Face id "
                            f"user/repo), got {name!r}.")
        trained = read_trained_extension(name, dora_dir, revision)
        return ExtendedMusicGen._on_base(trained, device, base, dora_dir, allow_pickle)

    @classmethod
    def from_solver_checkpoint(cls, path: PathLike, state: str = 'best', device: tp.Optional[str] = None,
                               dora_dir: tp.Optional[PathLike] = None, allow_pickle: bool = False) -> 'ExtendedMusicGen':
        """The model a run of `ExtendedMusicGenSolver` trained (file, XP folder or `//sig/SIG`), in its
        best state (the best validation state, with EMA when EMA is used) or its `'last'` one.

        Args:
            path: the checkpoint.
            state (str): 'best' or 'last'.
            device (str, optional): where to load; default cuda if available.
            dora_dir (str or Path, optional): the Dora folder `//sig/SIG` refers to.
            allow_pickle (bool): passed on to loading the base (see `from_base`).
        """
        if state not in ('best', 'last'):
            raise ValueError(f"state must be 'best' or 'last', got {state!r}.")
        path = sig_checkpoint(str(path), dora_dir) if str(path).startswith(SIG_PREFIX) else Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist. Give a run's folder (DORA_DIR/xps/SIG), its "
                                    "checkpoint.th, or //sig/SIG with the Dora folder it was trained in.")
        return cls._on_base(_run_extension(path, state), device, None, dora_dir, allow_pickle)

    @classmethod
    def _on_base(cls, trained: 'TrainedExtension', device: tp.Optional[str], base: tp.Any,
                 dora_dir: tp.Optional[PathLike], allow_pickle: bool) -> 'ExtendedMusicGen':
        """`trained` put back on its base: `base` if given, else the one it embeds, else the one it refers to.

        Refuses a base whose `weights_hash` is not the one the layers were trained on, naming both hashes.
        """
        device = device or default_device()
        source, reference, expected = trained.source, trained.base_reference, trained.base_hash
        if trained.package is not None and trained.package.self_contained and base is None:
            musicgen = embedded_base(trained.package, device, source)
        else:
            if base is None and reference is None:
                raise CheckpointError(f"{source} is extension-only and does not say where its base is: pass base=... "
                                      "(a MusicGen, path or Hugging Face id).")
            try:
                musicgen, _ = load_base(reference if base is None else base, device, dora_dir, None, allow_pickle)
            except FileNotFoundError as error:
                if base is not None:
                    raise
                raise CheckpointError(f"{source} is extension-only and its base cannot be found ({error}). If the base "
                                      f"moved, pass base='NEW_LOCATION' (get_pretrained(..., base=...)); it must have "
                                      f"the hash {expected}.") from None
        found = weights_hash(musicgen.lm.state_dict())
        if found != expected:
            description = 'given' if base is not None else reference or 'embedded'
            raise CheckpointError(
                f"{source} was trained on the base with hash {expected}, but the base {description} has hash "
                f"{found}. Load it onto the base it was trained on (or retrain the extension for this base).")
        try:
            lm = ExtendedLMModel.from_config(musicgen.lm, trained.config)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{source} has an extension config this base cannot build ({error}).") from None
        lm.load_extension_state_dict(trained.state, source)
        model = cls(trained.name or musicgen.name, _mono(musicgen.compression_model), lm,
                    max_duration=trained.max_duration or musicgen.max_duration, base_reference=reference,
                    base_hash=expected)
        if trained.generation:
            model.set_generation_params(**trained.generation)
        return model

    # ---- several extensions of one base ---------------------------------------------------------
    OWN = FrozenBaseWithExtension.OWN  # the name of the extension the model was loaded or built with

    def attach(self, name: str, source: tp.Any, extension_scale: tp.Optional[float] = None,
               dora_dir: tp.Optional[PathLike] = None, revision: tp.Optional[str] = None) -> None:
        """Attach another extension of this model's base under `name`, for generation (`extensions=`).

        `source`: an extension file or directory (`save`), a Hugging Face id holding one, a training
        run (its XP folder, `checkpoint.th` or `//sig/SIG` with `dora_dir`), or an `ExtendedMusicGen`.
        Only its new layers are kept (the base is this model's, computed once per batch); one trained
        on another base is refused, naming both hashes. `extension_scale` defaults to the source's.
        """
        if not isinstance(name, str) or not name.isidentifier() or name == self.OWN:
            raise ValueError(f"Extension name {name!r}: use a Python identifier other than {self.OWN!r} "
                             "(e.g. 'lofi').")
        if name in self.lm.transformer.attached:
            raise ValueError(f"An extension named {name!r} is already attached: detach('{name}') first.")
        requested = None if extension_scale is None else ExtensionConfig(extension_scale=extension_scale)
        if isinstance(source, ExtendedMusicGen):
            trained = TrainedExtension(source.lm.extension_config, source.lm.extension_state_dict(), source.base_hash,
                                       source.base_reference, source.name)
        elif not isinstance(source, (str, os.PathLike)) or not str(source).strip():
            raise TypeError(f"attach needs an extension (a path, a Hugging Face id user/repo, a training run or an "
                            f"ExtendedMusicGen), got {source!r}.")
        else:
            trained = read_trained_extension(source, dora_dir, revision)
        if trained.base_hash != self.base_hash:
            raise CheckpointError(f"{trained.source} was trained on the base with hash {trained.base_hash}, but this "
                                  f"model's base has hash {self.base_hash}: attach extensions of the same base only.")
        config = trained.config if requested is None else trained.config.with_scale(requested.extension_scale)
        self.lm.attach_extension(name, config, trained.state, trained.source)

    def detach(self, name: str) -> None:
        """Remove the attached extension `name` (its memory is freed)."""
        self._check_attached(name)
        self.lm.detach_extension(name)

    @property
    def extension_names(self) -> tp.List[str]:
        """`OWN` then the attached extensions' names, in the order they were attached."""
        return [self.OWN, *self.lm.transformer.attached.keys()]

    def set_extension_scale(self, name: str, scale: float) -> None:
        """`extension_scale` of one extension (`OWN` or an attached name)."""
        if name == self.OWN:
            self.extension_scale = scale
            return
        self._check_attached(name)
        self.lm.set_attached_scale(name, scale)

    def _check_attached(self, name: tp.Any) -> None:
        if name not in self.lm.transformer.attached:
            raise KeyError(f"No attached extension named {name!r}: the model has {self.extension_names}.")

    def _routes(self, extensions: tp.Any, count: int) -> tp.Optional[tp.List[tp.Optional[str]]]:
        """`extensions=` of a generation call as one route per item (None: the base alone)."""
        if extensions is None:
            return None
        routes = [extensions] * count if isinstance(extensions, str) else list(extensions)
        if len(routes) != count:
            raise GenerationInputError(f"{len(routes)} extensions for {count} items: give one per item "
                                       "(a name, or None for the base alone), or one name for all.")
        for route in routes:
            if route is not None and route != self.OWN:
                self._check_attached(route)
        return routes

    @property
    def extension_scale(self) -> float:
        return self.lm.extension_scale

    @extension_scale.setter
    def extension_scale(self, scale: float) -> None:
        self.lm.extension_scale = scale

    def set_generation_params(self, *args: tp.Any, extension_scale: tp.Optional[float] = None,
                              **kwargs: tp.Any) -> None:
        """`MusicGen.set_generation_params`, plus `extension_scale` (0.0 = base, 1.0 = as trained)."""
        if extension_scale is not None:  # checked before changing anything: all or nothing
            extension_scale = self.lm.extension_config.with_scale(extension_scale).extension_scale
        given = dict(zip(GENERATION_PARAMS, args), **kwargs)
        check_duration('duration', given.get('duration'))
        check_duration('extend_stride', given.get('extend_stride'))
        check_sampling(given, self.lm.card)
        if given.get('extend_stride', 0) >= self.max_duration:
            raise GenerationInputError(f"extend_stride={given['extend_stride']} must be shorter than the "
                                       f"model's max_duration ({self.max_duration} s).")
        super().set_generation_params(*args, **kwargs)
        if extension_scale is not None:
            self.extension_scale = extension_scale

    # Every generation mode takes `extensions`: None (the own extension for every item), one name
    # for all (`OWN` or an attached one), or one per item, None for the base alone.
    def generate(self, descriptions: tp.List[tp.Optional[str]], progress: bool = False,
                 return_tokens: bool = False, extensions: tp.Any = None):
        check_descriptions(descriptions)
        with self._requesting(self._routes(extensions, len(descriptions))):
            return super().generate(descriptions, progress=progress, return_tokens=return_tokens)

    def generate_unconditional(self, num_samples: int, progress: bool = False, return_tokens: bool = False,
                               extensions: tp.Any = None):
        check_num_samples(num_samples)
        with self._requesting(self._routes(extensions, num_samples)):
            return super().generate_unconditional(num_samples, progress=progress, return_tokens=return_tokens)

    def generate_continuation(self, prompt: torch.Tensor, prompt_sample_rate: int,
                              descriptions: tp.Optional[tp.List[tp.Optional[str]]] = None,
                              progress: bool = False, return_tokens: bool = False, extensions: tp.Any = None):
        check_waveform('prompt', prompt, prompt_sample_rate, max_seconds=self.duration,
                       min_seconds=1 / self.frame_rate)
        batch = prompt.shape[0] if prompt.dim() == 3 else 1
        if descriptions is not None:
            check_descriptions(descriptions)
            if len(descriptions) != batch:
                raise GenerationInputError(f"{len(descriptions)} descriptions for {batch} prompt(s): "
                                           "give one per prompt.")
        with self._requesting(self._routes(extensions, batch)):
            return super().generate_continuation(prompt, prompt_sample_rate, descriptions, progress=progress,
                                                 return_tokens=return_tokens)

    def generate_with_chroma(self, descriptions: tp.List[tp.Optional[str]], melody_wavs: tp.Any,
                             melody_sample_rate: int, progress: bool = False, return_tokens: bool = False,
                             extensions: tp.Any = None):
        check_descriptions(descriptions)
        routes = self._routes(extensions, len(descriptions))
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
        with self._requesting(routes):
            return super().generate_with_chroma(descriptions, melody_wavs, melody_sample_rate, progress=progress,
                                                return_tokens=return_tokens)

    @contextmanager
    def _requesting(self, routes: tp.Optional[tp.List[tp.Optional[str]]]) -> tp.Iterator[None]:
        self._requested_routes.value = routes
        try:
            yield
        finally:
            self._requested_routes.value = None

    def _generate_tokens(self, *args: tp.Any, **kwargs: tp.Any) -> torch.Tensor:
        # The layers' streaming state (KV caches) lives in the modules: one generation at a time.
        routes = getattr(self._requested_routes, 'value', None)
        with self._generation_lock, (self.lm.routed(routes) if routes is not None else nullcontext()):
            return super()._generate_tokens(*args, **kwargs)

    def _protected(self) -> tp.Dict[Path, str]:
        """Paths no write of this model may touch: its base, when it is a local file or directory."""
        reference = self.base_reference
        if reference and Path(reference).expanduser().exists():
            return {Path(reference).expanduser(): f'the base model of {self.name}'}
        return {}

    def save(self, path: PathLike, include_base: bool = True, overwrite: bool = False,
             dtype: tp.Any = None) -> Path:
        """Write an extension `get_pretrained` loads, atomically (io.extension_files has the format).

        A path with a suffix (`model.safetensors`) gives one file; one without (`my_extension/`)
        a directory, what one uploads to a Hugging Face repo. Self-contained by default (base LM,
        compression model, new layers); with `include_base=False` only the new layers and the
        base's reference and hash. Never writes onto the base; refuses an existing path unless
        `overwrite=True`. `dtype` (torch.float16 or torch.bfloat16, or its name) stores the new layers
        in half precision, half their bytes, recorded in the config; loading casts them back to the
        model's dtype.
        """
        if dtype is not None:
            storage_dtype(dtype)  # before anything is written
        destination = check_destination(path, self._protected(), overwrite)
        package = extension_package(self, include_base, dtype)
        if Path(path).suffix:
            return extension_files.write_file(package, destination)
        return extension_files.write_directory(package, destination)

    def merged_musicgen(self) -> MusicGen:
        """A plain `MusicGen` (L + N layers) equal to this model, e.g. to extend it again."""
        cfg, state = merged_lm_package(self.lm)
        lm = build_lm(cfg, state, self.device)
        return assemble_musicgen(self.name, _mono(self.compression_model), lm, self.max_duration)

    def export_audiocraft(self, directory: PathLike, overwrite: bool = False) -> Path:
        """Write AudioCraft's exported layout, loadable by stock `MusicGen.get_pretrained(directory)`.

        `state_dict.bin` holds the merged L + N layer LM, `compression_state_dict.bin` the base's
        compression model; the directory is written whole (both files or neither), never onto the
        base, and an existing one is replaced only with `overwrite=True`.
        """
        destination = check_destination(directory, self._protected(), overwrite)
        cfg, state = merged_lm_package(self.lm)
        return write_exported(destination, exported_package(OmegaConf.to_yaml(cfg), state),
                              compression_package(self.compression_model, self.base_reference))


def write_musicgen_exported(musicgen: MusicGen, directory: PathLike, overwrite: bool = False) -> Path:
    """A plain MusicGen (built by `models.bases`, so it carries its configs) in AudioCraft's exported layout."""
    destination = check_destination(directory, {}, overwrite)
    return write_exported(destination, exported_package(OmegaConf.to_yaml(musicgen.lm.cfg), musicgen.lm.state_dict()),
                          compression_package(musicgen.compression_model))


def _reference_of(musicgen: MusicGen) -> tp.Optional[str]:
    """Where an in-memory MusicGen can be found again: `MusicGen.get_pretrained(name)` keeps its id or path."""
    name = getattr(musicgen, 'name', None)
    try:
        source = resolve_base(name) if isinstance(name, str) else None
    except Exception:
        return None
    return source.reference if source is not None and source.kind == 'musicgen' else None


def load_base(base: tp.Any, device: tp.Optional[str] = None, dora_dir: tp.Optional[PathLike] = None,
              revision: tp.Optional[str] = None, allow_pickle: bool = False) -> tp.Tuple[MusicGen, tp.Optional[str]]:
    """A plain MusicGen from any base `ExtendedMusicGen.from_base` takes, and the reference to store.

    Bases holding new layers (an extension, a run of our solver, an `ExtendedMusicGen`) are merged
    into an L + N layer MusicGen. The reference is None for a model that exists only in memory.
    """
    if isinstance(base, ExtendedMusicGen):
        return base.merged_musicgen(), None
    if isinstance(base, MusicGen):
        return base, _reference_of(base)
    if not isinstance(base, (str, Path)):
        raise TypeError(f"Expected a MusicGen, a path or a Hugging Face id, got {type(base).__name__}.")
    source: BaseSource = resolve_base(base, dora_dir, revision, allow_pickle)
    device = device or default_device()
    if source.kind in ('extension', 'solver_checkpoint'):
        trained = (_package_extension(extension_files.read(source.location), source.reference)
                   if source.kind == 'extension' else _run_extension(Path(source.location), 'best'))
        model = ExtendedMusicGen._on_base(trained, device, None, dora_dir, allow_pickle)
        return model.merged_musicgen(), source.reference
    if source.kind == 'tiny':
        parts = str(source.location).split('/')
        return build_tiny_musicgen(parts[0] or 'text', seed=int(parts[1]) if len(parts) > 1 else 0), source.reference
    return load_plain_base(source, device, allow_pickle), source.reference


@dataclass
class TrainedExtension:
    """New layers trained on a base, as read from their source, before any base is loaded.

    Attributes:
        config, state: the layers' `ExtensionConfig` and state dict.
        base_hash, base_reference: the base they were trained on (`weights_hash`, where to find it).
        source: what they were read from, for messages.
        name, max_duration, generation: the saved model's name, duration and generation defaults.
        package: the extension file read (its base, when self-contained), or None for a run.
    """
    config: ExtensionConfig
    state: tp.Mapping[str, torch.Tensor]
    base_hash: str
    base_reference: tp.Optional[str]
    source: str
    name: tp.Optional[str] = None
    max_duration: tp.Optional[float] = None
    generation: tp.Dict[str, tp.Any] = field(default_factory=dict)
    package: tp.Optional[extension_files.ExtensionPackage] = None


def read_trained_extension(source: PathLike, dora_dir: tp.Optional[PathLike] = None,
                           revision: tp.Optional[str] = None) -> TrainedExtension:
    """The one reader of trained extensions: decides what `source` is and reads it once, loading no base.

    A training run (`//sig/SIG` with `dora_dir`, an XP folder holding checkpoint.th, a `.th` file: its
    best state), a local extension (`save`'s directory, `.safetensors` or legacy `.pt` file), or a
    Hugging Face repo holding an extension directory.
    """
    text = str(source)
    path = Path(text).expanduser()
    if text.startswith(SIG_PREFIX) or (path.is_dir() and (path / 'checkpoint.th').is_file()) \
            or (path.is_file() and path.suffix == '.th'):
        return _run_extension(sig_checkpoint(text, dora_dir) if text.startswith(SIG_PREFIX) else path, 'best')
    if path.exists():
        return _package_extension(extension_files.read(path), str(path.resolve()))
    if not is_hub_id(text):
        raise FileNotFoundError(f"Extension not found: {text}. Check the path, or give a Hugging Face id (user/repo).")
    resolved = resolve_base(text, revision=revision)
    if resolved.kind != 'extension':
        raise CheckpointError(f"{text} is a MusicGen, not an extension written by ExtendedMusicGen.save: extend it "
                              "with ExtendedMusicGen.from_base(...), or attach extensions of its base.")
    return _package_extension(extension_files.read(resolved.location), resolved.reference)


def _package_extension(package: extension_files.ExtensionPackage, source: str) -> TrainedExtension:
    config = package.config
    return TrainedExtension(_extension_config(config['extension'], source), package.tensors['extension'],
                            config['base']['hash'], config['base'].get('reference'), source, name=config['name'],
                            max_duration=config['max_duration'], generation=dict(config.get('generation') or {}),
                            package=package)


def _run_extension(path: Path, state: str) -> TrainedExtension:
    """The new layers of a run's checkpoint in its 'best' or 'last' state."""
    pkg = read_solver_checkpoint(path)
    info = pkg['base_model']
    weights = pkg['best_state']['model'] if state == 'best' else pkg['model']
    return TrainedExtension(_extension_config(info['extension_config'], str(path)), weights, info['hash'],
                            info['reference'], str(path))


def _extension_config(data: tp.Any, source: str) -> ExtensionConfig:
    """The `ExtensionConfig` a file or checkpoint of `source` stores, or a `CheckpointError`."""
    try:
        return ExtensionConfig.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise IntegrityError(f"{source} has an extension config this base cannot build ({error}).") from None
