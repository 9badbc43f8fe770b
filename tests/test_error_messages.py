"""The rows of docs/ERRORS.md that no other test checks: each bad input gets its error type and the
start of its message, through the public API, a command or a tiny training config.

Every test here is a unit call, a command, or a solver built in-process on the tiny models of
`audiocraft_ext.models.tiny` that stops before its first training step. Damaged files are written
on purpose, with the package's own writers where it has them.
"""
import io
import json
from pathlib import Path
import re
import shutil
import typing as tp

import numpy as np
import pytest
import soundfile
import torch

from audiocraft_ext import ExtendedLMModel, ExtendedMusicGen, cli, evaluate, train
from audiocraft_ext.config_flags import expand_config_flags
from audiocraft_ext.io import extension_files
from audiocraft_ext.io.errors import CheckpointError, IntegrityError
from audiocraft_ext.io.exported_layout import COMPRESSION_FILE, LM_FILE
from audiocraft_ext.io.torch_files import read_torch_file
from audiocraft_ext.models.bases import assemble_musicgen
from audiocraft_ext.models.tiny import (build_from_configs, build_tiny_musicgen, save_exported,
                                        tiny_compression_config, tiny_lm_config)
from hub_cache import hub_repo

pytestmark = pytest.mark.usefixtures('single_thread_torch')


def starts(pattern: str) -> str:
    """A `match=` pattern for a message that starts with `pattern` (a regex; `.*?` for a path)."""
    return '^' + pattern


def plain(text: str) -> str:
    return re.escape(text)


# ---- base and checkpoint files ---------------------------------------------------------------

@pytest.fixture(scope='module')
def extension(exported_bases, tmp_path_factory) -> tp.Dict[str, Path]:
    """A one-layer extension of the exported tiny text base, as written by `save`. Read-only:
    'self-contained' and 'extension-only' directories, 'file' (a self-contained .safetensors file)."""
    root = tmp_path_factory.mktemp('extension')
    model = ExtendedMusicGen.from_base(str(exported_bases['text']), 1, device='cpu')
    return {'self-contained': model.save(root / 'whole'),
            'extension-only': model.save(root / 'only', include_base=False),
            'file': model.save(root / 'whole.safetensors')}


def copy_of(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    return target


def test_a_path_that_is_missing_or_a_directory_where_a_file_is_read(tmp_path):
    with pytest.raises(FileNotFoundError, match=starts(plain('checkpoint not found: ') + '.*nope.th. Check the path.')):
        read_torch_file(tmp_path / 'nope.th', 'checkpoint')
    with pytest.raises(CheckpointError, match=r'is a directory; expected a checkpoint file\.'):
        read_torch_file(tmp_path, 'checkpoint')


def test_a_solver_checkpoint_that_does_not_exist_or_another_state(tmp_path):
    with pytest.raises(FileNotFoundError, match=plain("nope does not exist. Give a run's folder (DORA_DIR/xps/SIG)")):
        ExtendedMusicGen.from_solver_checkpoint(tmp_path / 'nope', device='cpu')
    with pytest.raises(ValueError, match=starts(plain("state must be 'best' or 'last', got 'worst'."))):
        ExtendedMusicGen.from_solver_checkpoint(tmp_path / 'nope', state='worst', device='cpu')


def test_a_run_folder_that_saved_no_checkpoint_yet(tmp_path):
    (tmp_path / 'dora' / 'xps' / 'abc123').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=starts(plain('//sig/abc123: ') + '.*' +
                                                       plain('checkpoint.th does not exist: the run has not saved'))):
        ExtendedMusicGen.from_solver_checkpoint('//sig/abc123', device='cpu', dora_dir=tmp_path / 'dora')


def test_a_torch_file_that_is_not_a_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / 'list.th')
    with pytest.raises(CheckpointError, match=plain('list.th is not a MusicGen checkpoint (expected an AudioCraft '
                                                    'checkpoint.th')):
        ExtendedMusicGen.from_base(str(tmp_path / 'list.th'), 1, device='cpu')


def _rewrite(path: Path, change: tp.Callable[[dict], tp.Any]) -> None:
    package = torch.load(path, weights_only=False)
    torch.save(change(package) or package, path)


def _drop_a_weight(package: dict) -> None:
    package['best_state'].pop(next(iter(package['best_state'])))


EXPORTED_CASES = {
    'language model that is no package': (LM_FILE, lambda package: {'foo': 1}, CheckpointError,
                                          plain("is not an exported language model (expected a dict with 'xp.cfg' "
                                                "and 'best_state'")),
    'language model weights that do not fit': (LM_FILE, _drop_a_weight, CheckpointError,
                                               starts(plain("The language model's weights do not fit its config ("))),
    'compression model weights that do not fit': (COMPRESSION_FILE, _drop_a_weight, CheckpointError,
                                                  starts(plain("The compression model's weights do not fit its "
                                                               "config ("))),
    'compression model that cannot be found': (COMPRESSION_FILE, lambda package: {'pretrained': 'no codec here'},
                                               FileNotFoundError,
                                               starts(plain('Compression model not found: no codec here. Give an '
                                                            'exported compression_state_dict.bin'))),
}


@pytest.mark.parametrize('case', EXPORTED_CASES)
def test_damaged_exported_directories(case, exported_bases, tmp_path):
    name, change, error, pattern = EXPORTED_CASES[case]
    folder = copy_of(exported_bases['text'], tmp_path)
    _rewrite(folder / name, change)
    with pytest.raises(error, match=pattern):
        ExtendedMusicGen.from_base(str(folder), 1, device='cpu')


@pytest.fixture(scope='module')
def audiocraft_checkpoint(tmp_path_factory) -> Path:
    """An AudioCraft MusicGen training checkpoint (`checkpoint.th` of MusicGenSolver) of the tiny text
    base, whose `compression_model_checkpoint` is a file that is no compression checkpoint."""
    root = tmp_path_factory.mktemp('audiocraft_run')
    lm = build_tiny_musicgen('text').lm
    cfg = lm.cfg.copy()
    cfg.solver = 'musicgen'
    cfg.compression_model_checkpoint = str(root / 'codec.th')
    torch.save({'foo': 1}, root / 'codec.th')
    torch.save({'xp.cfg': cfg, 'best_state': {'model': lm.state_dict()}}, root / 'checkpoint.th')
    return root / 'checkpoint.th'


def test_a_training_checkpoint_whose_codec_is_no_compression_checkpoint(audiocraft_checkpoint):
    with pytest.raises(CheckpointError, match=plain('codec.th (compression_model_checkpoint of ') + '.*' +
                       plain('checkpoint.th) is not a compression model training checkpoint with a best state.')):
        ExtendedMusicGen.from_base(str(audiocraft_checkpoint), 1, device='cpu')


def _edit_config(folder: Path, change: tp.Optional[tp.Callable[[dict], tp.Any]]) -> None:
    """Apply `change` to the directory's config; None: write a config cut short (not JSON)."""
    path = folder / extension_files.CONFIG_NAME
    config = json.loads(path.read_text())
    if change is None:
        path.write_text('{"format": ')
        return
    change(config)
    path.write_text(json.dumps(config))


CONFIG_CASES = {
    'not JSON': ('self-contained', None, CheckpointError,
                 plain('extension_config.json is not valid JSON (')),
    'another format': ('self-contained', lambda config: config.update(format='something.else'), CheckpointError,
                       plain("extension_config.json is not an audiocraft-ext extension config (format "
                             "'something.else').")),
    'keys missing': ('self-contained', lambda config: config.pop('name'), CheckpointError,
                     plain("extension_config.json lacks ['name']: the file is incomplete; use another copy.")),
    'weights not listed': ('self-contained', lambda config: config['files'].pop('extension.safetensors'),
                           CheckpointError,
                           plain('extension_config.json lists no extension.safetensors: the directory is incomplete.')),
    'new layers the base cannot build': ('self-contained',
                                         lambda config: config['extension'].update(num_additional_layers=0),
                                         CheckpointError, plain('has an extension config this base cannot build (')),
    'no base reference': ('extension-only', lambda config: config['base'].update(reference=None), CheckpointError,
                          plain('is extension-only and does not say where its base is: pass base=...')),
}


@pytest.mark.parametrize('case', CONFIG_CASES)
def test_damaged_extension_configs(case, extension, tmp_path):
    kind, change, error, pattern = CONFIG_CASES[case]
    folder = copy_of(extension[kind], tmp_path)
    _edit_config(folder, change)
    with pytest.raises(error, match=pattern):
        ExtendedMusicGen.get_pretrained(folder, device='cpu')


def _package_without(part: str) -> tp.Callable[[extension_files.ExtensionPackage], None]:
    def change(package: extension_files.ExtensionPackage) -> None:
        package.tensors.pop(part)
    return change


def _text_without_weights(package: extension_files.ExtensionPackage) -> None:
    package.tensors.pop('base_lm')
    package.tensors.pop('compression', None)
    package.texts.pop('compression', None)
    package.config.pop('compression', None)


def _self_contained_without_codec(package: extension_files.ExtensionPackage) -> None:
    package.tensors.pop('compression')
    package.texts.pop('compression')
    package.config.pop('compression', None)


PACKAGE_CASES = {
    'no extension weights': (_package_without('extension'), IntegrityError,
                             plain('holds no extension weights: the file is incomplete')),
    'a config text without its weights': (_text_without_weights, IntegrityError,
                                          plain('has a config text without its weights: the file is incomplete.')),
    'self-contained without a compression model': (_self_contained_without_codec, IntegrityError,
                                                   plain('is self-contained but holds no compression model: use '
                                                         'another copy.')),
}


@pytest.mark.parametrize('case', PACKAGE_CASES)
def test_incomplete_extension_files(case, extension, tmp_path):
    change, error, pattern = PACKAGE_CASES[case]
    package = extension_files.read(extension['self-contained'])
    change(package)
    path = extension_files.write_file(package, tmp_path / 'damaged.safetensors')
    with pytest.raises(error, match=pattern):
        ExtendedMusicGen.get_pretrained(path, device='cpu')


def test_a_single_file_whose_parts_differ_from_its_metadata(extension, tmp_path):
    import safetensors.torch
    with safetensors.safe_open(str(extension['file']), framework='pt') as file:
        metadata = file.metadata()
        tensors = {name: file.get_tensor(name) for name in file.keys() if name.startswith('extension.')}
    path = tmp_path / 'parts.safetensors'
    path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))
    with pytest.raises(IntegrityError, match=plain("parts.safetensors holds the parts ['extension'] but its metadata "
                                                   "lists ['base_lm', 'compression', 'extension']")):
        ExtendedMusicGen.get_pretrained(path, device='cpu')


def test_an_incomplete_legacy_file(tmp_path):
    torch.save({'format': extension_files.LEGACY_FORMAT, 'name': 'old'}, tmp_path / 'old.pt')
    with pytest.raises(CheckpointError, match=plain("old.pt is an incomplete extension file (missing 'base'): use "
                                                    "another copy.")):
        ExtendedMusicGen.get_pretrained(tmp_path / 'old.pt', device='cpu')


def test_a_hub_repo_that_cannot_be_read(monkeypatch):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise RuntimeError('connection refused')
    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', unreachable)
    with pytest.raises(CheckpointError, match=starts(plain('Cannot read the Hugging Face repo someone/model '
                                                           '(RuntimeError: connection refused).'))):
        ExtendedMusicGen.from_base('someone/model', 1, device='cpu')


def test_attaching_a_hub_musicgen_that_is_no_extension(exported_bases, tmp_path, monkeypatch):
    import huggingface_hub.constants
    hub_repo(tmp_path / 'hub', 'someone/plain-musicgen', {name: exported_bases['text'] / name
                                                          for name in (LM_FILE, COMPRESSION_FILE)})
    monkeypatch.setenv('AUDIOCRAFT_CACHE_DIR', str(tmp_path / 'hub'))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    model = ExtendedMusicGen.from_base(build_tiny_musicgen('text'), 1, device='cpu')
    with pytest.raises(CheckpointError, match=starts(plain('someone/plain-musicgen is a MusicGen, not an extension'))):
        model.attach('plain', 'someone/plain-musicgen')


def _built_without_config(part: str):
    """A MusicGen assembled from AudioCraft's builders by hand: `part` ('lm' or 'codec') carries no config."""
    from audiocraft.models import builders
    compression_model, lm = build_from_configs(tiny_lm_config('text'), tiny_compression_config())
    if part == 'lm':
        lm = builders.get_lm_model(tiny_lm_config('text')).eval()
    else:
        compression_model = builders.get_compression_model(tiny_compression_config()).eval()
    return assemble_musicgen('hand-built', compression_model, lm, max_duration=30.0)


@pytest.mark.parametrize('part, pattern', [
    ('lm', 'The base LM carries no xp.cfg, so its architecture cannot be written down'),
    ('codec', 'The compression model carries no config, so it cannot be written down.')])
def test_saving_a_base_assembled_without_its_config(part, pattern, tmp_path):
    model = ExtendedMusicGen.from_base(_built_without_config(part), 1, device='cpu')
    with pytest.raises(CheckpointError, match=starts(plain(pattern))):
        model.save(tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_info_of_a_file_that_is_no_extension(tmp_path, capsys):
    (tmp_path / 'notes.txt').write_text('not a model')
    assert cli.main(['info', str(tmp_path / 'notes.txt')]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'notes.txt'} is not an extension written by "
                                              "ExtendedMusicGen.save (expected a directory with extension_config.json")


def test_a_shipped_base_without_its_recipe_or_config(tmp_path):
    import safetensors.torch
    from audiocraft_ext.io.hashing import file_sha256
    from audiocraft_ext.models import shipped
    with pytest.raises(FileNotFoundError, match=plain('recipe.json not found: the shipped base is missing from this '
                                                      'installation')):
        shipped.read_recipe(tmp_path)
    safetensors.torch.save_file({'w': torch.zeros(2)}, str(tmp_path / shipped.FILES['codec']))
    recipe = {'codec': {'sha256': file_sha256(tmp_path / shipped.FILES['codec']), 'config': {}}}
    (tmp_path / shipped.RECIPE_FILE).write_text(json.dumps(recipe))
    with pytest.raises(CheckpointError, match=plain("codec.safetensors has no 'xp.cfg' in its metadata.")):
        shipped.read_part('codec', tmp_path)


# ---- export command ----------------------------------------------------------------------------

def test_export_of_what_is_no_training_run(exported_bases, audiocraft_checkpoint, tmp_path, capsys):
    assert cli.main(['export', str(exported_bases['text']), str(tmp_path / 'out')]) == 2
    assert capsys.readouterr().err.startswith(f"error: {exported_bases['text']} is not a training run (a musicgen "
                                              "base): export takes the checkpoint.th of a training run")
    assert cli.main(['export', str(audiocraft_checkpoint), str(tmp_path / 'out'), '--format', 'extended']) == 2
    assert capsys.readouterr().err.startswith(f"error: {audiocraft_checkpoint} is a checkpoint of AudioCraft's "
                                              "MusicGenSolver (no new layers): export it with --format audiocraft.")
    assert not (tmp_path / 'out').exists()


# ---- the extended model --------------------------------------------------------------------------

def test_extending_what_is_no_musicgen_language_model():
    from audiocraft.models.lm import LMModel

    class OtherLM(LMModel):
        pass
    with pytest.raises(TypeError, match=starts(plain('base_lm must be an audiocraft LMModel, got str.'))):
        ExtendedLMModel('an lm', 1)
    with pytest.raises(TypeError, match=starts(plain("OtherLM bases are not supported: only MusicGen's LMModel."))):
        ExtendedLMModel(OtherLM.__new__(OtherLM), 1)
    base = build_tiny_musicgen('text')
    with pytest.raises(TypeError, match=starts(plain('lm must be an ExtendedLMModel, got LMModel: use '
                                                     'ExtendedMusicGen.from_base'))):
        ExtendedMusicGen('plain', base.compression_model, base.lm)


def _prepend_base_lm():
    cfg = tiny_lm_config('text')
    cfg.fuser.cross, cfg.fuser.prepend = [], ['description']
    return build_from_configs(cfg, tiny_compression_config())[1]


def _lm_with_an_activation_module():
    lm = build_tiny_musicgen('text').lm
    for layer in lm.transformer.layers:
        layer.activation = torch.nn.SiLU()
    return lm


OVERRIDE_CASES = {
    'cross-attention on a base without it': (_prepend_base_lm, {'cross_attention': True},
                                             'cross_attention=True needs a base that fuses conditions by '
                                             'cross-attention'),
    'rotary embeddings without custom attention': (lambda: build_tiny_musicgen('text').lm,
                                                   {'positional_embedding': 'rope', 'custom': False,
                                                    'memory_efficient': False},
                                                   "Rotary embeddings need AudioCraft's custom attention: pass "
                                                   "custom=True."),
    'a base activation it cannot name': (_lm_with_an_activation_module, {},
                                         "Cannot read the base's activation SiLU(): pass `activation='gelu'`"),
}


@pytest.mark.parametrize('case', OVERRIDE_CASES)
def test_layer_overrides_the_base_cannot_take(case):
    build, overrides, message = OVERRIDE_CASES[case]
    with pytest.raises(ValueError, match=starts(plain(message))):
        ExtendedLMModel(build(), 1, **overrides)


def test_an_unknown_tiny_flavour():
    with pytest.raises(ValueError, match=starts(plain("Unknown flavour 'huge': choose one of ('text',"))):
        ExtendedMusicGen.from_base('//tiny/huge', 1, device='cpu')


# ---- training configuration ------------------------------------------------------------------------

@pytest.fixture(scope='module')
def run_args(exported_bases, dora_dir, tmp_path_factory) -> tp.List[str]:
    """The debug solver on the exported tiny text base and a prepared dataset of four tones."""
    from audiocraft_ext.data.prepare import prepare_data
    from audiocraft_ext.data.synth_dataset import write_tone_folder
    root = tmp_path_factory.mktemp('run_data')
    write_tone_folder(root / 'audio', num_files=4, duration=1.0)
    prepare_data(root / 'audio', root / 'egs', captions=root / 'audio' / 'captions.csv')
    return ['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={exported_bases["text"]}',
            f'egs_root={root / "egs"}']


def test_a_batch_that_the_ranks_cannot_share(run_args, build_solver, monkeypatch):
    import flashy
    monkeypatch.setattr(flashy.distrib, 'world_size', lambda: 3)
    with pytest.raises(ValueError, match=starts(plain('dataset.batch_size=4 is not divisible by the 3 workers: it is '
                                                      'the global batch size.'))):
        build_solver([*run_args, 'dataset.batch_size=4'])


def test_continue_from_a_run_with_another_number_of_new_layers(run_args, build_solver):
    xp, solver = build_solver([*run_args, 'extended_model.num_additional_layers=1'])
    with xp.enter():
        solver.save_checkpoints()
    message = ("The checkpoint's extension has num_additional_layers=1 but this run builds 2: set extended_model.* as "
               "in the checkpoint's run.")
    with pytest.raises(RuntimeError, match=starts(plain(message))):
        build_solver([*run_args, 'extended_model.num_additional_layers=2',
                      f'continue_from={xp.folder / "checkpoint.th"}'], restore=True)


def test_continue_from_a_musicgen_training_checkpoint(run_args, build_solver, audiocraft_checkpoint):
    message = (f"{audiocraft_checkpoint} is not a checkpoint of ExtendedMusicGenSolver (no base_model entry): "
               "continue_from takes a run of this solver. To train new layers on a MusicGen checkpoint, pass it as "
               "pretrained_model_checkpoint instead.")
    with pytest.raises(CheckpointError, match=starts(plain(message))):
        build_solver([*run_args, f'continue_from={audiocraft_checkpoint}'], restore=True)


def test_execute_only_without_a_run_to_continue(run_args):
    xp = train.main.get_xp([*run_args, 'execute_only=evaluate'])
    with pytest.raises(ValueError, match=starts(plain('execute_only needs continue_from=<sig or path> (or '
                                                      'execute_inplace=true).'))):
        train.run_xp(xp)


def test_a_base_whose_codec_has_other_codebooks(run_args, build_solver, tmp_path):
    compression_model, lm = build_from_configs(tiny_lm_config('text'), tiny_compression_config(n_q=2))
    base = save_exported(assemble_musicgen('mismatched', compression_model, lm), tmp_path / 'base')
    with pytest.raises(ValueError, match=starts(plain('The base LM models 4 codebooks of 256 tokens but its '
                                                      'compression model has 2 of 256.'))):
        build_solver([*run_args, f'pretrained_model_checkpoint={base}'])


def test_negative_replay_weights(run_args, build_solver):
    with pytest.raises(ValueError, match=starts(plain('replay.ce_weight=-1.0 and distill.weight=') + r'[\d.]+' +
                                                plain(' must be >= 0.'))):
        build_solver([*run_args, 'replay.ce_weight=-1'])


def test_a_manifest_that_cannot_be_read(run_args, build_solver, tmp_path):
    from audiocraft_ext.data.checks import DataCheckError
    egs = copy_of(Path(run_args[2].split('=', 1)[1]), tmp_path)
    (egs / 'valid' / 'data.jsonl').unlink()
    (egs / 'valid' / 'data.jsonl').mkdir()  # there, but no file
    with pytest.raises(DataCheckError, match=starts(plain(f"datasource.valid: cannot read the manifest "
                                                          f"{egs / 'valid' / 'data.jsonl'} ("))):
        build_solver([*run_args[:2], f'egs_root={egs}'])


def test_base_generations_of_no_length(run_args, build_solver):
    message = 'replay.duration is null and there is no dataset.segment_duration: set replay.duration'
    with pytest.raises(ValueError, match=starts(plain(message))):
        build_solver([*run_args, 'replay.duration=null', 'dataset.segment_duration=null'])


def test_a_config_flag_without_its_group():
    with pytest.raises(SystemExit, match=starts(plain('--config=extended_musicgen: expected GROUP/NAME, e.g. '
                                                      '--config=solver/extended_musicgen'))):
        expand_config_flags(['--config=extended_musicgen'])


# ---- evaluation --------------------------------------------------------------------------------------

def test_evaluating_a_run_without_checkpoint_or_report(run_args, build_solver, tmp_path, monkeypatch):
    dora = Path(train.main.dora.dir)
    (dora / 'xps' / 'unsaved').mkdir(parents=True)
    (dora / 'xps' / 'unsaved' / '.argv.json').write_text(json.dumps([*run_args, 'optim.epochs=9']))
    with pytest.raises(evaluate.EvaluationError, match=r'xps/\w+ has no checkpoint\.th yet: nothing to evaluate\.'):
        evaluate.run(['sig=unsaved'])
    with pytest.raises(evaluate.EvaluationError, match=starts(plain(f'checkpoint={tmp_path / "nope.th"}: ') +
                                                              '.*not found')):
        evaluate.run([f'checkpoint={tmp_path / "nope.th"}'])
    xp, solver = build_solver(run_args)
    with xp.enter():
        solver.save_checkpoints()
    monkeypatch.setattr(train, 'run_xp', lambda xp: None)  # an evaluate stage that writes nothing
    with pytest.raises(evaluate.EvaluationError, match=starts('The evaluate stage wrote no .*metrics.json ' +
                                                              plain('(evaluate.compare_base=false?).'))):
        evaluate.run([f'sig={xp.sig}'])


def test_reference_sets_that_cannot_be_found(tmp_path, monkeypatch):
    import omegaconf
    from audiocraft_ext.evaluation import reference_sets
    cfg = omegaconf.OmegaConf.create({'datasource': {}})
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=starts(plain(f'evaluate.reference_dset={tmp_path / "empty"}: ') + '.*' +
                                                       plain('holds neither data.jsonl nor an evaluate/ split.'))):
        reference_sets.resolve_reference_dset(str(tmp_path / 'empty'), cfg)
    with pytest.raises(FileNotFoundError, match=starts(plain('evaluate.reference_dset=audio/nowhere is neither a '
                                                             'manifest folder, an egs root, nor a dset config'))):
        reference_sets.resolve_reference_dset('audio/nowhere', cfg)
    (tmp_path / 'configs' / 'dset' / 'audio').mkdir(parents=True)
    (tmp_path / 'configs' / 'dset' / 'audio' / 'train_only.yaml').write_text('datasource:\n  train: egs/train\n')
    monkeypatch.setattr(reference_sets, 'CONFIG_DIR', tmp_path / 'configs')
    with pytest.raises(ValueError, match=starts(plain('evaluate.reference_dset=audio/train_only: ') + '.*' +
                                                plain('train_only.yaml sets no datasource.evaluate.'))):
        reference_sets.resolve_reference_dset('audio/train_only', cfg)


@pytest.fixture
def metrics_cfg():
    """The solver config's evaluate and metrics sections, every optional metric off."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(Path(train.__file__).parent / 'configs' / 'solver' / 'extended_musicgen.yaml')
    cfg.sample_rate = 16000
    return cfg


def _metric_on(name: str, **settings: tp.Any) -> tp.Callable[[tp.Any, Path], None]:
    def change(cfg, tmp_path: Path) -> None:
        cfg.evaluate.metrics[name] = True
        for key, value in settings.items():
            node = cfg.metrics
            *parents, last = key.split('.')
            for parent in parents:
                node = node[parent]
            node[last] = str(tmp_path / 'exists.bin') if value == 'EXISTING' else value
    return change


METRIC_CASES = {
    'fad model unknown': (_metric_on('fad', **{'fad.model': 'other'}),
                          "evaluate.metrics.fad=true but metrics.fad.model=other is unknown (AudioCraft has 'tf')."),
    'fad without the TensorFlow code': (_metric_on('fad', **{'fad.tf.model_path': 'EXISTING', 'fad.tf.bin': None}),
                                        'evaluate.metrics.fad=true but metrics.fad.tf.bin=None is not a folder'),
    'kld model unknown': (_metric_on('kld', **{'kld.model': 'other'}),
                          "evaluate.metrics.kld=true but metrics.kld.model=other is unknown (AudioCraft has 'passt')."),
    'text consistency model unknown': (_metric_on('text_consistency', **{'text_consistency.model': 'other'}),
                                       'evaluate.metrics.text_consistency=true but only '
                                       'metrics.text_consistency.model=clap exists.'),
}


@pytest.mark.parametrize('case', METRIC_CASES)
def test_optional_metrics_that_cannot_run(case, metrics_cfg, tmp_path):
    from audiocraft_ext.evaluation import audio_metrics
    change, message = METRIC_CASES[case]
    (tmp_path / 'exists.bin').write_bytes(b'x')
    change(metrics_cfg, tmp_path)
    with pytest.raises(RuntimeError, match=starts(plain(message))):
        audio_metrics.check_optional_metrics(metrics_cfg)


def test_a_clap_checkpoint_that_does_not_exist_and_a_metric_that_fails_to_build(metrics_cfg, tmp_path, monkeypatch):
    import importlib.util
    from audiocraft_ext.evaluation import audio_metrics
    metrics_cfg.evaluate.metrics.text_consistency = True
    metrics_cfg.metrics.text_consistency.clap.model_path = str(tmp_path / 'clap.pt')
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *args: object() if name == 'laion_clap' else find_spec(name, *args))
    with pytest.raises(RuntimeError, match=starts(plain('evaluate.metrics.text_consistency=true but the CLAP '
                                                        f'checkpoint {tmp_path / "clap.pt"} (resolved to'))):
        audio_metrics.check_optional_metrics(metrics_cfg)
    monkeypatch.undo()
    metrics_cfg.metrics.kld.passt = {'pretrained_length': 'not a length'}
    with pytest.raises(RuntimeError, match=starts(plain("evaluate.metrics.kld=true but building AudioCraft's metric "
                                                        "failed ("))):
        audio_metrics.build_optional_metric('kld', metrics_cfg, tmp_path)


def test_audio_metrics_of_a_codec_or_clips_they_cannot_read():
    from audiocraft.models import builders
    from audiocraft_ext.evaluation import audio_metrics
    with pytest.raises(TypeError, match=starts(plain("Linear has no EnCodec encoder: frechet_encodec_latent_distance "
                                                     "needs AudioCraft's EncodecModel."))):
        audio_metrics.encoder_latents(torch.nn.Linear(2, 2), torch.zeros(1, 1, 3200))
    cfg = tiny_compression_config()
    cfg.channels = cfg.encodec.channels = cfg.seanet.channels = 2
    stereo = builders.get_compression_model(cfg).eval()
    with pytest.raises(ValueError, match=starts(plain("Audio has 1 channels, the compression model's encoder 2."))):
        audio_metrics.encoder_latents(stereo, torch.zeros(1, 1, 3200))
    with pytest.raises(RuntimeError, match=starts(plain('Need at least 2 frames to fit a Gaussian.'))):
        audio_metrics.GaussianStats().mean_cov()


def test_scoring_an_evaluation_set_without_tokens():
    from audiocraft_ext.evaluation.lm_metrics import CrossEntropyTotals
    with pytest.raises(RuntimeError, match=starts(plain('No valid token to score in the evaluation set: is it '
                                                        'empty?'))):
        CrossEntropyTotals(4).summary()


def test_measuring_forgetting_without_held_out_generations(run_args, build_solver):
    """replay.holdout=0 and no evaluate.reference_dset: the evaluate stage has nothing to measure forgetting on."""
    xp, solver = build_solver([*run_args, 'optim.epochs=3'])
    with xp.enter():
        solver.save_checkpoints()
    with pytest.raises(ValueError, match=starts(plain('replay.holdout=0: no held-out generation to measure forgetting '
                                                      'on. Set replay.holdout'))):
        evaluate.run([f'checkpoint={xp.folder / "checkpoint.th"}', 'replay.holdout=0', 'evaluate.audio_metrics=false'])


# ---- data: preparation, splits, synthetic and rendered datasets, replay sets ---------------------------

def test_prepare_data_of_missing_short_or_badly_captioned_audio(tmp_path):
    from audiocraft_ext.data.prepare import DataPreparationError, prepare_data
    from audiocraft_ext.data.synth_dataset import write_tone_folder
    audio = tmp_path / 'audio'
    with pytest.raises(DataPreparationError, match=starts(plain(f'Audio folder not found: {audio}.'))):
        prepare_data(audio, tmp_path / 'egs')
    audio.mkdir()
    (audio / 'notes.txt').write_text('no audio here')
    with pytest.raises(DataPreparationError, match=starts(plain('No audio files (.wav'))):
        prepare_data(audio, tmp_path / 'egs')
    write_tone_folder(audio, num_files=3, duration=0.5)
    with pytest.raises(DataPreparationError, match=starts(plain(f'Captions file not found: {tmp_path / "none.csv"}.'))):
        prepare_data(audio, tmp_path / 'egs', captions=tmp_path / 'none.csv')
    with pytest.raises(DataPreparationError, match=starts(plain('3 audio file(s) shorter than 1.0 s, e.g. '))):
        prepare_data(audio, tmp_path / 'egs', captions=audio / 'captions.csv', min_duration=1.0)
    hint = '(3 usable audio files, valid=5.0, evaluate=0.1). Add audio files (at least 3)'
    with pytest.raises(DataPreparationError, match=starts(plain('The train split is empty: 3 items leave none after') +
                                                          '.*' + plain(hint))):
        prepare_data(audio, tmp_path / 'egs', captions=audio / 'captions.csv', valid=5.0)
    sidecar = audio / 'tone_000.json'
    sidecar.write_text('["a list"]')
    with pytest.raises(DataPreparationError, match=starts(plain(f'{sidecar} does not hold a JSON object; fix or delete '
                                                                'it.'))):
        prepare_data(audio, tmp_path / 'egs', captions=audio / 'captions.csv')
    sidecar.write_text('{"description": ')
    with pytest.raises(DataPreparationError, match=starts(plain(f'{sidecar} is not valid JSON (') + '.*' +
                                                          plain('); fix or delete it.'))):
        prepare_data(audio, tmp_path / 'egs', captions=audio / 'captions.csv')
    assert not (tmp_path / 'egs').exists()


SPLIT_CASES = {
    'no splits': (None, [], 'No splits given.'),
    'negative size': (10, [('train', 1.0), ('valid', -1)], "Split 'valid': size must be a count or a fraction >= 0, "
                                                           "got -1."),
    'fraction without a count': (None, [('train', 8), ('valid', 0.1)], "Split 'valid' is a fraction (0.1) but "
                                                                       "num_items is None."),
    'first split a fraction without a count': (None, [('train', 1.0)], "Split 'train' is a fraction (1.0) but "
                                                                       "num_items is None."),
    'nothing left for the first split': (3, [('train', 1.0), ('valid', 5)], "The train split is empty: 3 items leave "
                                                                            "none after {'valid': 5"),
}


@pytest.mark.parametrize('case', SPLIT_CASES)
def test_split_sizes_that_cannot_be_dealt(case):
    from audiocraft_ext.data.splits import split_sizes
    num_items, splits, message = SPLIT_CASES[case]
    with pytest.raises(ValueError, match=starts(plain(message))):
        split_sizes(num_items, splits)


def test_synthetic_datasets_of_unknown_domains_or_sizes(tmp_path):
    from audiocraft_ext.data.synth_dataset import write_dataset
    with pytest.raises(ValueError, match=starts(plain("Unknown domain 'jazz'; expected one of ['old', 'new']."))):
        write_dataset(tmp_path / 'out', 'jazz')
    with pytest.raises(ValueError, match=starts(plain('duration and sample_rate must be positive, got 0.0, 16000.'))):
        write_dataset(tmp_path / 'out', 'old', duration=0.0)
    assert not (tmp_path / 'out').exists()


@pytest.fixture(scope='module')
def renderer():
    """Skip (fail on CI) where fluidsynth or its SoundFont is missing: scripts/setup.sh installs both."""
    import os
    from audiocraft_ext.data import midi_render
    try:
        midi_render.find_fluidsynth()
        midi_render.find_soundfont()
    except midi_render.RendererNotFoundError as error:
        if os.environ.get('CI'):
            pytest.fail(str(error))
        pytest.skip(str(error))


def test_score_datasets_of_unknown_domains_sizes_or_folders(renderer, tmp_path):
    from audiocraft_ext.data import score_dataset, score_domains
    with pytest.raises(ValueError, match=starts(plain("Unknown domain 'jazz' of the score set; expected one of"))):
        score_dataset.write_score_dataset(tmp_path / 'out', 'jazz')
    with pytest.raises(ValueError, match=starts(plain("Domain 'my music': use letters, digits, '-' and '_'"))):
        score_dataset.write_score_dataset(tmp_path / 'out', 'my music', midi_dir=tmp_path)
    with pytest.raises(ValueError, match=starts(plain('duration and sample_rate must be positive, got -1.0, 16000.'))):
        score_dataset.write_score_dataset(tmp_path / 'out', 'old', duration=-1.0)
    with pytest.raises(FileNotFoundError, match=starts(plain(f'MIDI folder not found: {tmp_path / "midi"}.'))):
        score_dataset.write_score_dataset(tmp_path / 'out', 'mine', midi_dir=tmp_path / 'midi')
    (tmp_path / 'midi').mkdir()
    with pytest.raises(FileNotFoundError, match=starts(plain('No MIDI files (.mid'))):
        score_dataset.write_score_dataset(tmp_path / 'out', 'mine', midi_dir=tmp_path / 'midi')
    with pytest.raises(FileNotFoundError, match=plain('scores.json not found: the score set is missing from this '
                                                      'installation')):
        score_domains.load_score_set(tmp_path / 'midi')
    assert not (tmp_path / 'out').exists()


def _midi(path: Path) -> Path:
    from audiocraft_ext.data.midi_file import Note, Part, midi_bytes
    path.write_bytes(midi_bytes([Part('melody', 0, 0, [Note(0, 480, 60)])], 120.0))
    return path


def test_midi_files_cut_short_or_written_with_a_bad_meter(tmp_path):
    from audiocraft_ext.data.midi_file import MidiFileError, Note, Part, midi_bytes, read_midi
    data = _midi(tmp_path / 'whole.mid').read_bytes()
    (tmp_path / 'header.mid').write_bytes(b'MThd' + (2).to_bytes(4, 'big') + data[8:10])  # 2 of its 6 bytes
    with pytest.raises(MidiFileError, match=plain('header.mid is not a readable MIDI file: its header is truncated.')):
        read_midi(tmp_path / 'header.mid')
    (tmp_path / 'track.mid').write_bytes(data[:30])
    with pytest.raises(MidiFileError, match=plain("track.mid is not a readable MIDI file: its b'MTrk' chunk is "
                                                  "truncated.")):
        read_midi(tmp_path / 'track.mid')
    with pytest.raises(ValueError, match=starts(plain("A time signature's denominator is a power of 2, got 3."))):
        midi_bytes([Part('melody', 0, 0, [Note(0, 480, 60)])], 120.0, time_signature=(3, 3))


def test_rendering_a_missing_or_unreadable_midi_file_or_a_bad_excerpt(renderer, tmp_path):
    from audiocraft_ext.data import midi_render
    with pytest.raises(midi_render.RendererNotFoundError, match=starts(plain(f'MIDI file not found: '
                                                                             f'{tmp_path / "none.mid"}.'))):
        midi_render.render_midi(tmp_path / 'none.mid', 16000, 0.0, 1.0)
    with pytest.raises(ValueError, match=starts(plain('Need start_s >= 0, duration_s > 0 and sample_rate > 0, got '
                                                      '-1.0, 1.0, 16000.'))):
        midi_render.render_midi(_midi(tmp_path / 'a.mid'), 16000, -1.0, 1.0)
    (tmp_path / 'text.mid').write_text('not a MIDI file')
    with pytest.raises(midi_render.MidiRenderError, match=starts(plain(f'FluidSynth failed on {tmp_path / "text.mid"} '
                                                                       '(exit '))):
        midi_render.render_midi(tmp_path / 'text.mid', 16000, 0.0, 1.0)


def test_replay_sets_of_no_samples_too_few_to_hold_out_or_of_another_version(tmp_path):
    from audiocraft_ext.data.replay_set import (ReplaySet, ReplaySetError, generate_replay_set, load_replay_set,
                                                save_replay_set)
    lm = build_tiny_musicgen('text').lm
    with pytest.raises(ReplaySetError, match=starts(plain('A replay set needs num_samples >= 1 and at least one frame, '
                                                          'got 0 samples of 10 frames.'))):
        generate_replay_set(lm, ['calm piano'], 0, 10, 16000)
    replay = ReplaySet(torch.zeros(2, 4, 10, dtype=torch.long), ['a', 'b'])
    with pytest.raises(ReplaySetError, match=starts(plain("holdout=2 must be at least 0 and below the set's size 2"))):
        replay.split(2)
    folder = save_replay_set(replay, tmp_path / 'set', {})
    meta = json.loads((folder / 'prompts.json').read_text())
    (folder / 'prompts.json').write_text(json.dumps({**meta, 'version': 0}))
    with pytest.raises(ReplaySetError, match=plain('set is not a replay set of version 1 with one prompt per item; '
                                                   'delete the folder to generate it again.')):
        load_replay_set(folder)


# ---- the demo, reports and plans -------------------------------------------------------------------

@pytest.mark.parametrize('options, message', [
    (['--segment', '9', '--duration', '4'], '--segment (9) must not be longer than --duration (4).'),
    (['--clips', '0'], '--clips, --epochs, --updates and --new-layers must be at least 1.')])
def test_demo_sizes_that_cannot_work(options, message, tmp_path):
    with pytest.raises(SystemExit, match=starts(plain(message))):
        cli.main(['demo', '--out', str(tmp_path / 'out'), '--cache-dir', str(tmp_path / 'cache'), *options])
    assert not (tmp_path / 'out').exists()


def test_a_demo_run_that_fails(tmp_path):
    from audiocraft_ext.demo.progress import Steps
    from audiocraft_ext.demo.runs import run_subprocess
    with pytest.raises(RuntimeError, match=starts(plain('python -m audiocraft_ext.no_such_module failed (exit code 1); '
                                                        f'last lines of {tmp_path / "run.log"}:'))):
        run_subprocess('audiocraft_ext.no_such_module', [], tmp_path / 'run.log', Steps(['run'], out=io.StringIO()))


def test_codec_recipes_that_cannot_train():
    from audiocraft_ext.demo.codec_training import CodecRecipe, train_codec
    cfg = tiny_compression_config()
    with pytest.raises(ValueError, match=starts(plain('The recipe needs 0 < autoencoder_updates < updates, got 5 and '
                                                      '5: the quantiser joins after stage 1.'))):
        train_codec(cfg, [np.zeros(32000, dtype=np.float32)], CodecRecipe(autoencoder_updates=5, updates=5))
    with pytest.raises(ValueError, match=starts(plain('No training clip is longer than 1 s.'))):
        train_codec(cfg, [np.zeros(8000, dtype=np.float32)], CodecRecipe(autoencoder_updates=1, updates=2))


def test_report_of_an_incomplete_demo_output_or_an_unevaluated_folder(tmp_path, capsys):
    from audiocraft_ext.evaluation.html_report import ReportError
    from audiocraft_ext.evaluation.listening import read_metrics
    (tmp_path / 'demo').mkdir()
    (tmp_path / 'demo' / 'summary.json').write_text('{}')
    (tmp_path / 'demo' / 'metrics.json').write_text('{"cut short')
    assert cli.main(['report', str(tmp_path / 'demo')]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'demo'} is not a complete demo output (")
    with pytest.raises(ReportError, match=starts(plain(f'{tmp_path} has no metrics.json: evaluate the run first'))):
        read_metrics(tmp_path)


@pytest.fixture
def clip_file(tmp_path) -> Path:
    soundfile.write(str(tmp_path / 'clip.wav'), np.full(1600, 0.1, dtype=np.float32), 16000)
    return tmp_path / 'clip.wav'


def test_report_clips_that_are_empty_or_cannot_be_encoded(clip_file, tmp_path, monkeypatch, report_metrics):
    from audiocraft_ext.evaluation.html_report import Clip, PromptRow, ReportError, write_report
    late = [PromptRow('calm', [Clip('base', clip_file, start=5.0)])]
    with pytest.raises(ReportError, match=starts(plain(f"The audio {clip_file} for 'base' is empty after 5 s."))):
        write_report(tmp_path / 'report', 'title', late, report_metrics, {}, {})
    with pytest.raises(ReportError, match=starts(plain("audio format 'ogg' is not supported: use one of"))):
        write_report(tmp_path / 'report', 'title', [], report_metrics, {}, {}, audio_format='ogg')
    tools = tmp_path / 'bin'
    tools.mkdir()
    (tools / 'ffmpeg').write_text('#!/bin/sh\necho "Unknown encoder libmp3lame" >&2\nexit 1\n')
    (tools / 'ffmpeg').chmod(0o755)
    monkeypatch.setenv('PATH', str(tools))
    rows = [PromptRow('calm', [Clip('base', clip_file)])]
    with pytest.raises(ReportError, match=starts(plain(f'ffmpeg could not encode {clip_file} to MP3: Unknown encoder '
                                                       'libmp3lame'))):
        write_report(tmp_path / 'report', 'title', rows, report_metrics, {}, {}, audio_format='mp3')
    assert not (tmp_path / 'report').exists()


def _exported_with(source: Path, folder: Path, change: tp.Callable[[dict, dict], None]) -> Path:
    """A copy of the exported `source` whose packages (LM, compression model) `change` edits."""
    import omegaconf
    folder = copy_of(source, folder)
    lm = torch.load(folder / LM_FILE, weights_only=False)
    codec = torch.load(folder / COMPRESSION_FILE, weights_only=False)
    cfg = omegaconf.OmegaConf.create(lm['xp.cfg'])
    change(cfg, codec)
    lm['xp.cfg'] = omegaconf.OmegaConf.to_yaml(cfg)
    torch.save(lm, folder / LM_FILE)
    torch.save(codec, folder / COMPRESSION_FILE)
    return folder


def _t5_conditioner(cfg, codec) -> None:
    cfg.conditioners.description = {'model': 't5', 't5': {'name': 't5-tiny', 'finetune': False}}


def _hub_codec(cfg, codec) -> None:
    codec.clear()
    codec.update(pretrained='facebook/encodec_24khz')


@pytest.fixture(scope='module')
def plan_bases(exported_bases, extension, tmp_path_factory) -> tp.Dict[str, Path]:
    """Bases whose size the plan cannot read: an extension, an exported MusicGen with an unknown T5 or a
    hub codec it does not know, an AudioCraft checkpoint whose codec is another run."""
    root = tmp_path_factory.mktemp('plan_bases')
    lm = build_tiny_musicgen('text').lm
    cfg = lm.cfg.copy()
    cfg.compression_model_checkpoint = '//sig/othercodec'
    torch.save({'xp.cfg': cfg, 'best_state': {'model': lm.state_dict()}}, root / 'checkpoint.th')
    return {'extension': extension['self-contained'],
            't5': _exported_with(exported_bases['text'], root / 't5', _t5_conditioner),
            'codec': _exported_with(exported_bases['text'], root / 'codec', _hub_codec),
            'checkpoint': root / 'checkpoint.th'}


PLAN_CASES = {
    'gpu memory below the CUDA context': (['--base', 'small', '--gpu-memory', '0.1'],
                                          'error: --gpu-memory 0.1 leaves nothing beside the CUDA context ('),
    'effective batch zero': (['--base', 'small', '--effective-batch', '0'],
                             'error: --effective-batch 0: give a positive number of examples.'),
    'an extension as the base': (['--base', 'extension'], 'error: {extension} is a extension: the plan reads released '
                                                         'MusicGens, exported directories'),
    'an unknown text encoder': (['--base', 't5'], 'error: {t5}/state_dict.bin: the text encoder t5-tiny is not one '
                                                  'whose size the plan knows ('),
    'an unknown hub codec': (['--base', 'codec'], 'error: {codec}/compression_state_dict.bin names the codec '
                                                  'facebook/encodec_24khz, whose size the plan does not know'),
    'a checkpoint whose codec is another run': (['--base', 'checkpoint'],
                                                'error: {checkpoint}: its codec //sig/othercodec is neither '
                                                'facebook/encodec_32khz nor an exported compression_state_dict.bin'),
}


@pytest.mark.parametrize('case', PLAN_CASES)
def test_plans_of_bad_options_or_bases_it_cannot_size(case, plan_bases, capsys):
    options, message = PLAN_CASES[case]
    options = [str(plan_bases.get(option, option)) for option in options]
    assert cli.main(['plan', *options]) == 2
    assert capsys.readouterr().err.startswith(message.format(**plan_bases))


def test_plan_settings_out_of_range():
    from audiocraft_ext.models import memory_plan
    with pytest.raises(ValueError, match=starts(plain("precision='float8': use one of"))):
        memory_plan.Settings(precision='float8')
    with pytest.raises(ValueError, match=starts(plain('batch_size=0: use a positive integer.'))):
        memory_plan.Settings(batch_size=0)


def test_generate_with_one_name_attached_twice(tmp_path, capsys):
    assert cli.main(['generate', str(tmp_path / 'model'), 'calm', '--attach', 'lofi=a.safetensors',
                     '--attach', 'lofi=b.safetensors', '--duration', '1', '--out', str(tmp_path / 'out')]) == 2
    assert capsys.readouterr().err == 'error: --attach lofi is given twice: one extension per name.\n'


# ---- export to transformers ------------------------------------------------------------------------

@pytest.fixture(scope='module')
def offline_t5(tmp_path_factory) -> tp.Iterator[None]:
    """AudioCraft's T5Conditioner loads a tiny random T5 and its tokenizer from a folder (as in
    test_transformers_export.py), so bases with a T5 text conditioner build offline."""
    import audiocraft.modules.conditioners as audiocraft_conditioners
    from transformers import T5Config, T5EncoderModel, T5Tokenizer
    folder = tmp_path_factory.mktemp('t5')
    vocab = [('<pad>', 0.0), ('</s>', 0.0), ('<unk>', 0.0), ('\u2581', -2.0)] + \
        [(char, -8.0) for char in 'abcdefghijklmnopqrstuvwxyz']
    config = T5Config(vocab_size=len(vocab), d_model=512, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                      feed_forward_proj='relu', pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        T5EncoderModel(config).save_pretrained(folder)
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(folder)

    class Encoder:
        @staticmethod
        def from_pretrained(name: str, *args, **kwargs):
            return T5EncoderModel.from_pretrained(folder)

    class Tokenizer:
        @staticmethod
        def from_pretrained(name: str, *args, **kwargs):
            return T5Tokenizer.from_pretrained(folder)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('HF_HUB_OFFLINE', '1')
        patch.setattr(audiocraft_conditioners, 'T5EncoderModel', Encoder)
        patch.setattr(audiocraft_conditioners, 'T5Tokenizer', Tokenizer)
        yield


def t5_model(flavour: str = 'text', card: int = 256,
             conditioners: tp.Optional[dict] = None, codec: tp.Optional[tp.Callable[[tp.Any], None]] = None):
    """A one-layer extension of a tiny MusicGen with a T5 text conditioner; `codec` edits its
    compression model's config."""
    lm_cfg = tiny_lm_config(flavour, card=card)
    lm_cfg.conditioners = conditioners if conditioners is not None else {
        'description': {'model': 't5', 't5': {'name': 't5-small', 'finetune': False, 'word_dropout': 0.0,
                                              'normalize_text': False}}}
    compression_cfg = tiny_compression_config(lm_cfg.sample_rate, n_q=lm_cfg.transformer_lm.n_q // lm_cfg.channels,
                                              card=card)
    if codec is not None:
        codec(compression_cfg)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        compression_model, lm = build_from_configs(lm_cfg, compression_cfg)
    return ExtendedMusicGen.from_base(assemble_musicgen('tiny-t5', compression_model, lm), 1, device='cpu')


def _set(**changes: tp.Any) -> tp.Callable[[tp.Any], None]:
    def change(cfg) -> None:
        for key, value in changes.items():
            node = cfg
            *parents, last = key.split('.')
            for parent in parents:
                node = node[parent]
            node[last] = value
    return change


def _per_time_step(model: ExtendedMusicGen) -> ExtendedMusicGen:
    model.compression_model.per_timestep = True
    return model


def _normalising_text(model: ExtendedMusicGen) -> ExtendedMusicGen:
    # Set after building: building a T5Conditioner with normalize_text=True loads spaCy's English model.
    model.lm.condition_provider.conditioners['description'].normalize_text = True
    return model


def _other_codec(model: ExtendedMusicGen) -> ExtendedMusicGen:
    """The model with a compression model of another kind than EnCodec (AudioCraft's DAC wrapper, unloaded:
    only its kind and numbers are read before the refusal)."""
    from audiocraft.models.encodec import DAC
    codec = model.compression_model

    class OtherCodec(DAC):
        channels, frame_rate, sample_rate = codec.channels, codec.frame_rate, codec.sample_rate
        cardinality, num_codebooks, total_codebooks = codec.cardinality, codec.num_codebooks, codec.total_codebooks
    model.compression_model = OtherCodec.__new__(OtherCodec)
    return model


def _projecting_codebooks(model: ExtendedMusicGen) -> ExtendedMusicGen:
    # AudioCraft 1.3's ResidualVectorQuantizer has no codebook_dim: a quantiser built otherwise projects.
    model.compression_model.quantizer.vq.layers[0].project_in = torch.nn.Linear(16, 8)
    return model


TRANSFORMERS_CASES = {
    'no text conditioner': (lambda: t5_model(conditioners={}),
                            "The base has no text conditioner ('description'): transformers' "
                            "MusicgenForConditionalGeneration cannot represent it."),
    'text normalisation': (lambda: _normalising_text(t5_model()),
                           "The base's T5 conditioner normalises text (normalize_text=True: lemmas, no stop words)"),
    'stereo interleaved per time step': (lambda: _per_time_step(t5_model('stereo')),
                                         'The base interleaves its stereo codes per time step'),
    'a codec of another kind': (lambda: _other_codec(t5_model()),
                                "The compression model is a OtherCodec: transformers' MusicgenForConditionalGeneration "
                                "decodes with EnCodec only."),
    'a codec without quantiser': (lambda: t5_model(codec=lambda cfg: (_set(**{'encodec.quantizer': 'no_quant'})(cfg),
                                                                      cfg.__setitem__('no_quant', {}))),
                                  "The compression model is SEANetEncoder + DummyQuantizer + SEANetDecoder, not "
                                  "EnCodec's SEANet + RVQ"),
    'codebooks that project': (lambda: _projecting_codebooks(t5_model()),
                               "The compression model's codebooks project their input (codebook_dim differs from the "
                               "latent dimension)"),
    'codes per codebook not a power of 2': (lambda: t5_model(card=200),
                                            "The compression model has 200 codes per codebook: transformers' "
                                            "EncodecModel needs a power of 2."),
    'no residual blocks': (lambda: t5_model(codec=_set(**{'seanet.n_residual_layers': 0})),
                           'The compression model has no residual blocks (n_residual_layers: 0)'),
    'LSTMs of two sizes': (lambda: t5_model(codec=_set(**{'seanet.lstm': 1, 'seanet.decoder.lstm': 2})),
                           "The compression model's encoder and decoder LSTMs have [1, 2] layers"),
    'a final activation': (lambda: t5_model(codec=_set(**{'seanet.decoder.final_activation': 'Tanh'})),
                           "The compression model's decoder ends with Tanh, which transformers' EncodecModel does "
                           "not have"),
}


@pytest.mark.parametrize('case', TRANSFORMERS_CASES)
def test_what_transformers_cannot_represent(case, offline_t5, tmp_path):
    from audiocraft_ext.models.transformers_export import TransformersExportError, export_transformers
    build, message = TRANSFORMERS_CASES[case]
    with pytest.raises(TransformersExportError, match=starts(plain(message))):
        export_transformers(build(), tmp_path / 'out')
    assert list(tmp_path.iterdir()) == []


def test_transformers_export_of_a_model_not_extended(tmp_path):
    from audiocraft_ext.models.transformers_export import export_transformers
    with pytest.raises(TypeError, match=starts(plain('Expected an ExtendedMusicGen, got MusicGen: extend it first'))):
        export_transformers(build_tiny_musicgen('text'), tmp_path / 'out')
