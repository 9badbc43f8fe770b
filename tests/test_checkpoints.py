"""Saved extensions (issues 3 and 14): save / get_pretrained, self-contained and extension-only, as one
.safetensors file and as a directory; atomic writes; loading bases of every kind; clear errors for bad
files. Hostile files, integrity checks and overwrite protection: test_file_safety.py."""
import json
import os
import re
from pathlib import Path
import shutil

from omegaconf import OmegaConf
import pytest
import torch

from audiocraft.models import MusicGen

from audiocraft_ext import ExtendedMusicGen
from audiocraft_ext.io import extension_files
from audiocraft_ext.io.errors import CheckpointError
from audiocraft_ext.io.hashing import weights_hash
from audiocraft_ext.io.torch_files import read_torch_file
from audiocraft_ext.models.tiny import FLAVOURS, build_tiny_musicgen, offline_demucs


pytestmark = pytest.mark.usefixtures('single_thread_torch')


def _copy(directory: Path, destination: Path) -> Path:
    shutil.copytree(directory, destination)
    return destination


@pytest.fixture(scope='module')
def extended(perturb_extension):
    """An extended model of `base` (a path is passed as str), with perturbed new layers."""
    def build(base, num_additional_layers=2, seed=1, **kwargs) -> ExtendedMusicGen:
        with offline_demucs():
            model = ExtendedMusicGen.from_base(str(base) if isinstance(base, Path) else base,
                                               num_additional_layers, device='cpu', **kwargs)
        perturb_extension(model.lm, seed)
        return model
    return build


def _load(path, **kwargs) -> ExtendedMusicGen:
    with offline_demucs():
        return ExtendedMusicGen.get_pretrained(str(path), device='cpu', **kwargs)


def _torch_load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _training_checkpoint(model: MusicGen, exported_dir: Path, path: Path) -> Path:
    """An AudioCraft MusicGen solver checkpoint.th: xp.cfg (DictConfig) + best_state['model']."""
    cfg = OmegaConf.create(OmegaConf.to_container(model.lm.cfg))
    cfg.compression_model_checkpoint = '//pretrained/' + str(exported_dir / 'compression_state_dict.bin')
    cfg.solver = 'musicgen'
    torch.save({'xp.cfg': cfg, 'best_state': {'model': model.lm.state_dict()}, 'epoch': 3}, path)
    return path


# --- 7. save / get_pretrained -------------------------------------------------------------------

@pytest.mark.parametrize('flavour,name', [(flavour, 'model.safetensors') for flavour in FLAVOURS] +
                         [('text', 'model_dir')])
def test_self_contained_round_trip_is_bit_identical_without_the_base(flavour, name, exported_bases, tmp_path,
                                                                     model_logits, extended):
    base_dir = _copy(exported_bases[flavour], tmp_path / 'base')
    model = extended(base_dir)
    model.extension_scale = 0.7
    model.set_generation_params(duration=0.5, top_k=7, extension_scale=0.7)
    expected = model_logits(model)
    path = model.save(tmp_path / name)
    assert Path(path) == tmp_path / name and (path.is_file() if name.endswith('.safetensors') else path.is_dir())
    shutil.rmtree(base_dir)  # self-contained: the base is not needed any more

    loaded = _load(path)
    assert type(loaded) is ExtendedMusicGen
    assert loaded.extension_scale == 0.7
    assert loaded.lm.num_additional_layers == 2 and len(loaded.lm.base_transformer.layers) == 2
    assert (loaded.sample_rate, loaded.audio_channels, loaded.max_duration) == \
        (model.sample_rate, model.audio_channels, model.max_duration)
    assert all(torch.equal(v, model.lm.extension.state_dict()[k])
               for k, v in loaded.lm.extension.state_dict().items())
    assert torch.equal(model_logits(loaded), expected)
    assert loaded.duration == 0.5 and loaded.generation_params['top_k'] == 7  # generation defaults travel too


def test_self_contained_file_holds_base_compression_extension_config_and_version(exported_bases, tmp_path, extended):
    model = extended(exported_bases['text'])
    directory = model.save(tmp_path / 'model')
    assert sorted(p.name for p in directory.iterdir()) == [
        'base_lm.safetensors', 'base_lm.yaml', 'compression.safetensors', 'compression.yaml',
        'extension.safetensors', 'extension_config.json']
    pkg = extension_files.read(directory)
    config = pkg.config
    assert config['format'] == 'audiocraft_ext.extension' and config['format_version'] == 2
    exported_lm = _torch_load(exported_bases['text'] / 'state_dict.bin')
    exported_compression = _torch_load(exported_bases['text'] / 'compression_state_dict.bin')
    lm_state, compression = pkg.tensors['base_lm'], pkg.tensors['compression']
    assert lm_state.keys() == exported_lm['best_state'].keys()
    assert all(torch.equal(lm_state[k], exported_lm['best_state'][k]) for k in lm_state)
    assert compression.keys() == exported_compression['best_state'].keys()
    assert all(torch.equal(compression[k], exported_compression['best_state'][k]) for k in compression)
    assert OmegaConf.create(pkg.texts['base_lm']) == OmegaConf.create(exported_lm['xp.cfg'])
    assert config['extension']['num_additional_layers'] == 2
    assert pkg.tensors['extension'].keys() == model.lm.extension.state_dict().keys()
    assert config['base']['hash'] == weights_hash(exported_lm['best_state'])
    assert config['base']['reference'] == str(exported_bases['text'].resolve())
    # The same content as one file, the config in its safetensors metadata.
    single = extension_files.read(model.save(tmp_path / 'model.safetensors'))
    assert single.config == config and single.texts == pkg.texts
    assert all(torch.equal(single.tensors[part][k], v) for part in pkg.tensors for k, v in pkg.tensors[part].items())


def test_extension_only_round_trip_and_size(exported_bases, tmp_path, model_logits, extended):
    base_dir = exported_bases['text']
    model = extended(base_dir)
    model.extension_scale = 0.3
    expected = model_logits(model)
    extension_only = model.save(tmp_path / 'extension_only.safetensors', include_base=False)
    full = model.save(tmp_path / 'full.safetensors')

    pkg = extension_files.read(extension_only)
    assert set(pkg.tensors) == {'extension'} and not pkg.texts
    assert pkg.config['base']['reference'] == str(base_dir)
    assert pkg.config['base']['hash'] == weights_hash(_torch_load(base_dir / 'state_dict.bin')['best_state'])
    assert extension_only.stat().st_size < full.stat().st_size / 3
    assert extension_only.stat().st_size < (base_dir / 'state_dict.bin').stat().st_size

    loaded = _load(extension_only)
    assert loaded.extension_scale == 0.3
    assert torch.equal(model_logits(loaded), expected)
    # The base may also be given explicitly, e.g. after moving it (same weights: same hash).
    assert torch.equal(model_logits(_load(extension_only, base=build_tiny_musicgen('text'))), expected)


@pytest.mark.parametrize('dtype,tolerance', [(torch.float16, 1e-2), ('bfloat16', 5e-2)])
def test_half_precision_extension_halves_the_file_and_loads_back_in_float32(exported_bases, tmp_path, model_logits,
                                                                             extended, dtype, tolerance):
    model = extended(exported_bases['text'])
    expected = model_logits(model)
    single = model.save(tmp_path / 'single.safetensors', include_base=False)
    half = model.save(tmp_path / 'half.safetensors', include_base=False, dtype=dtype)
    package = extension_files.read(half)
    name = str(dtype).replace('torch.', '')
    assert package.config['extension_dtype'] == name
    assert {tensor.dtype for tensor in package.tensors['extension'].values()} == {getattr(torch, name)}
    assert half.stat().st_size < 0.6 * single.stat().st_size
    loaded = _load(half)
    assert {parameter.dtype for parameter in loaded.lm.extension.parameters()} == {torch.float32}
    logits = model_logits(loaded)
    assert not torch.equal(logits, expected)  # rounded ...
    torch.testing.assert_close(logits, expected, atol=tolerance, rtol=0, equal_nan=True)  # ... but close
    # A directory too; a dtype that is not a float storage is refused before anything is written.
    assert extension_files.read_config(model.save(tmp_path / 'half_dir', dtype=dtype))['extension_dtype'] == name
    with pytest.raises(ValueError, match="dtype=torch.int8: store the new layers in one of"):
        model.save(tmp_path / 'int8.safetensors', dtype=torch.int8)
    assert not (tmp_path / 'int8.safetensors').exists()


def test_extension_only_refuses_another_base_with_both_hashes(exported_bases, other_text_base, tmp_path, extended):
    model = extended(exported_bases['text'])
    extension_only = model.save(tmp_path / 'extension_only.safetensors', include_base=False)
    trained_on = weights_hash(_torch_load(exported_bases['text'] / 'state_dict.bin')['best_state'])
    other = weights_hash(_torch_load(other_text_base / 'state_dict.bin')['best_state'])
    assert trained_on != other
    with pytest.raises(CheckpointError) as info:
        _load(extension_only, base=str(other_text_base))
    assert trained_on in str(info.value) and other in str(info.value)


def test_extension_only_refuses_a_base_that_changed_at_its_reference(exported_bases, other_text_base, tmp_path,
                                                                     extended):
    base_dir = _copy(exported_bases['text'], tmp_path / 'base')
    extension_only = extended(base_dir).save(tmp_path / 'extension_only.safetensors', include_base=False)
    for name in ('state_dict.bin', 'compression_state_dict.bin'):
        shutil.copyfile(other_text_base / name, base_dir / name)
    with pytest.raises(CheckpointError) as info:
        _load(extension_only)
    assert weights_hash(_torch_load(other_text_base / 'state_dict.bin')['best_state']) in str(info.value)


def test_extension_only_of_an_in_memory_base_is_refused_at_save(tmp_path, model_logits, extended):
    model = extended(build_tiny_musicgen('text'))
    with pytest.raises(CheckpointError, match='include_base'):
        model.save(tmp_path / 'extension_only.safetensors', include_base=False)
    assert not any(tmp_path.iterdir())
    # Self-contained works for such a model.
    loaded = _load(model.save(tmp_path / 'full.safetensors'))
    assert torch.equal(model_logits(loaded), model_logits(model))


def test_newer_format_version_is_refused(exported_bases, tmp_path, extended):
    path = extended(exported_bases['text']).save(tmp_path / 'model')
    config_file = path / extension_files.CONFIG_NAME
    config = json.loads(config_file.read_text())
    config['format_version'] = extension_files.FORMAT_VERSION + 1
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match='format version') as info:
        _load(path)
    assert str(extension_files.FORMAT_VERSION + 1) in str(info.value) and 'upgrade audiocraft-ext' in str(info.value)


def test_file_not_written_by_save_is_refused_by_get_pretrained(exported_bases, tmp_path):
    with pytest.raises(CheckpointError, match='ExtendedMusicGen.save'):
        _load(exported_bases['text'] / 'state_dict.bin')
    torch.save({'format_version': 1}, tmp_path / 'other.pt')
    with pytest.raises(CheckpointError, match='other.pt'):
        _load(tmp_path / 'other.pt')


class _DiskFull(OSError):
    pass


@pytest.mark.parametrize('error', [_DiskFull, KeyboardInterrupt])
def test_save_is_atomic(exported_bases, tmp_path, monkeypatch, error, file_digests, model_logits, perturb_extension,
                        extended):
    import safetensors.torch
    model = extended(exported_bases['text'])
    path = model.save(tmp_path / 'model.safetensors')
    directory = model.save(tmp_path / 'model_dir')
    before, before_dir, expected = path.read_bytes(), file_digests(directory), model_logits(model)
    perturb_extension(model.lm, seed=7)  # the next save would write other bytes
    real_save_file = safetensors.torch.save_file

    def failing_save(tensors, *args, **kwargs):
        raise error('simulated failure while serialising')

    def failing_save_file(tensors, filename, *args, **kwargs):
        real_save_file(tensors, filename, *args, **kwargs)  # a file of the directory is written ...
        raise error('simulated failure while writing')  # ... then the write fails

    monkeypatch.setattr(safetensors.torch, 'save', failing_save)
    monkeypatch.setattr(safetensors.torch, 'save_file', failing_save_file)
    for target in (path, tmp_path / 'new.safetensors', directory, tmp_path / 'new_dir'):
        for include_base in (True, False):
            with pytest.raises(error):
                model.save(target, include_base=include_base, overwrite=True)
    monkeypatch.undo()
    assert path.read_bytes() == before and file_digests(directory) == before_dir  # the previous ones are intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.safetensors', 'model_dir']  # no temporary
    assert torch.equal(model_logits(_load(path)), expected)
    assert torch.equal(model_logits(_load(directory)), expected)


def test_saved_files_get_the_usual_permissions(exported_bases, tmp_path, extended):
    # A file written through a temporary must end up with the mode a plain open() gives
    # (0o666 minus the umask), not mkstemp's private 0o600: checkpoints are shared and served.
    reference = tmp_path / 'plain'
    reference.write_bytes(b'')
    expected = reference.stat().st_mode & 0o777
    model = extended(exported_bases['text'])
    written = [model.save(tmp_path / 'full.safetensors'),
               model.save(tmp_path / 'extension_only.safetensors', include_base=False)]
    written += list(model.export_audiocraft(tmp_path / 'export').iterdir())
    written += list(model.save(tmp_path / 'directory').iterdir())
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(expected)}


def test_the_base_files_are_never_modified(exported_bases, tmp_path, file_digests, extended):
    base_dir = _copy(exported_bases['text'], tmp_path / 'base')
    before = file_digests(base_dir)
    model = extended(base_dir)
    full = model.save(tmp_path / 'full.safetensors')
    extension_only = model.save(tmp_path / 'extension_only', include_base=False)
    model.export_audiocraft(tmp_path / 'export')
    _load(extension_only)
    _load(full)
    again = ExtendedMusicGen.from_base(str(full), 1, device='cpu')
    again.save(tmp_path / 'again.safetensors', include_base=False)
    assert file_digests(base_dir) == before


def test_weights_hash_is_float16_tolerant_and_content_sensitive():
    state = build_tiny_musicgen('text').lm.state_dict()
    digest = weights_hash(state)
    assert weights_hash({k: v.half() if v.is_floating_point() else v for k, v in state.items()}) == digest
    changed = dict(state)
    key = next(k for k, v in state.items() if v.is_floating_point())
    changed[key] = state[key] + 1.0
    assert weights_hash(changed) != digest
    renamed = {('x' + k if k == key else k): v for k, v in state.items()}
    assert weights_hash(renamed) != digest


def test_weights_hash_accepts_scalar_tensors():
    assert weights_hash({'step': torch.tensor(3.0)}) != weights_hash({'step': torch.tensor(4.0)})
    assert weights_hash({'flag': torch.tensor(True), 'n': torch.tensor(1)})


# --- 9. Loading a base ----------------------------------------------------------------------------

@pytest.mark.parametrize('flavour', FLAVOURS)
def test_from_base_exported_directory(flavour, exported_bases, model_logits, extended):
    model = extended(exported_bases[flavour], seed=0)
    model.extension_scale = 0.0
    reference = build_tiny_musicgen(flavour)  # built independently, same seed as the export
    assert torch.equal(model_logits(model), model_logits(reference))
    assert model.base_reference == str(exported_bases[flavour].resolve())
    assert (model.sample_rate, model.audio_channels, model.max_duration) == \
        (reference.sample_rate, reference.audio_channels, reference.max_duration)


def test_from_base_training_checkpoint(exported_bases, tmp_path, model_logits, perturb_extension):
    reference = build_tiny_musicgen('text')
    path = _training_checkpoint(reference, exported_bases['text'], tmp_path / 'checkpoint.th')
    model = ExtendedMusicGen.from_base(str(path), 2, device='cpu')
    assert model.lm.num_base_layers == 2
    assert model.sample_rate == reference.sample_rate and model.max_duration == reference.max_duration
    assert torch.equal(model_logits(model), model_logits(reference))
    perturb_extension(model.lm)
    loaded = _load(model.save(tmp_path / 'extension_only.safetensors', include_base=False))
    assert torch.equal(model_logits(loaded), model_logits(model))


def test_training_checkpoint_base_saves_self_contained(exported_bases, tmp_path, model_logits, extended):
    path = _training_checkpoint(build_tiny_musicgen('text'), exported_bases['text'], tmp_path / 'checkpoint.th')
    model = extended(path)
    loaded = _load(model.save(tmp_path / 'model.safetensors'))
    assert torch.equal(model_logits(loaded), model_logits(model))


def test_stock_loaded_base_saves_self_contained(exported_bases, tmp_path, model_logits, extended):
    stock = MusicGen.get_pretrained(str(exported_bases['text']), device='cpu')
    model = extended(stock)
    assert model.base_reference == str(exported_bases['text'].resolve())  # MusicGen keeps where it came from
    loaded = _load(model.save(tmp_path / 'model.safetensors'))
    assert torch.equal(model_logits(loaded), model_logits(model))


@pytest.mark.parametrize('include_base', [True, False])
def test_from_base_extended_file_merges_then_extends(exported_bases, tmp_path, include_base, model_logits,
                                                     perturb_extension, extended):
    first = extended(exported_bases['text'], num_additional_layers=2)
    first.extension_scale = 0.5
    path = first.save(tmp_path / 'first.safetensors', include_base=include_base)
    second = ExtendedMusicGen.from_base(str(path), 3, device='cpu')
    assert second.lm.num_base_layers == 4 and len(second.lm.base_transformer.layers) == 4
    assert second.lm.num_additional_layers == 3 and len(second.lm.extension.layers) == 3
    assert second.extension_scale == 1.0
    torch.testing.assert_close(model_logits(second), model_logits(first), atol=1e-5, rtol=0)
    # Its own extension-only file refers to the first file and round-trips.
    perturb_extension(second.lm, seed=3)
    loaded = _load(second.save(tmp_path / 'second.safetensors', include_base=False))
    assert loaded.lm.num_base_layers == 4
    assert torch.equal(model_logits(loaded), model_logits(second))


# --- 10. Bad input --------------------------------------------------------------------------------

def test_missing_paths_raise_file_not_found(tmp_path):
    for missing in (str(tmp_path / 'missing'), tmp_path / 'missing' / 'model.pt'):
        with pytest.raises(FileNotFoundError, match='missing'):
            ExtendedMusicGen.from_base(missing, 2, device='cpu')
        with pytest.raises(FileNotFoundError, match='missing'):
            ExtendedMusicGen.get_pretrained(str(missing), device='cpu')


def test_missing_relative_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def no_hub(*args, **kwargs):
        raise RuntimeError('the Hugging Face hub was queried')

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', no_hub)
    monkeypatch.setattr(huggingface_hub, 'snapshot_download', no_hub)
    with pytest.raises(FileNotFoundError, match='missing.pt'):
        ExtendedMusicGen.from_base('checkpoints/missing.pt', 2, device='cpu')


@pytest.fixture
def bad_files(tmp_path, exported_bases, extended):
    """An empty, a random-bytes and a truncated extension file."""
    empty = tmp_path / 'empty.pt'
    empty.write_bytes(b'')
    noise = tmp_path / 'noise.pt'
    noise.write_bytes(os.urandom(4096))
    full = extended(exported_bases['text']).save(tmp_path / 'full.safetensors')
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
    return [empty, noise, truncated]


def test_unreadable_files_raise_checkpoint_errors_naming_the_file(bad_files):
    for path in bad_files:
        for load in (lambda p: ExtendedMusicGen.from_base(str(p), 2, device='cpu'), _load):
            with pytest.raises(CheckpointError, match=path.name):
                load(path)


def test_swapped_exported_files_raise_a_checkpoint_error(exported_bases, tmp_path):
    swapped = tmp_path / 'swapped'
    swapped.mkdir()
    shutil.copyfile(exported_bases['text'] / 'state_dict.bin', swapped / 'compression_state_dict.bin')
    shutil.copyfile(exported_bases['text'] / 'compression_state_dict.bin', swapped / 'state_dict.bin')
    with pytest.raises(CheckpointError, match='state_dict.bin'):
        ExtendedMusicGen.from_base(str(swapped), 2, device='cpu')


@pytest.mark.parametrize('missing', ['state_dict.bin', 'compression_state_dict.bin'])
def test_incomplete_exported_directory(exported_bases, tmp_path, missing):
    directory = _copy(exported_bases['text'], tmp_path / 'base')
    (directory / missing).unlink()
    with pytest.raises(CheckpointError, match=missing):
        ExtendedMusicGen.from_base(str(directory), 2, device='cpu')


def test_wrong_kinds_of_files_raise_checkpoint_errors(exported_bases, tmp_path):
    with pytest.raises(CheckpointError, match='directory'):  # one file of an exported model
        ExtendedMusicGen.from_base(str(exported_bases['text'] / 'state_dict.bin'), 2, device='cpu')
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'plain.pt')
    torch.save([1, 2, 3], tmp_path / 'list.pt')
    for name in ('plain.pt', 'list.pt'):
        with pytest.raises(CheckpointError, match=name):
            ExtendedMusicGen.from_base(str(tmp_path / name), 2, device='cpu')
    torch.save({'xp.cfg': OmegaConf.create({'solver': 'compression', 'sample_rate': 16000}),
                'best_state': {'model': {}}}, tmp_path / 'compression_checkpoint.th')
    with pytest.raises(CheckpointError, match='compression'):
        ExtendedMusicGen.from_base(str(tmp_path / 'compression_checkpoint.th'), 2, device='cpu')
    cfg = OmegaConf.create(OmegaConf.to_container(build_tiny_musicgen('text').lm.cfg))
    torch.save({'xp.cfg': cfg, 'best_state': {}}, tmp_path / 'untrained.th')
    with pytest.raises(CheckpointError, match='best_state'):
        ExtendedMusicGen.from_base(str(tmp_path / 'untrained.th'), 2, device='cpu')
    with pytest.raises(CheckpointError, match='directory'):
        ExtendedMusicGen.get_pretrained(str(tmp_path), device='cpu')


def test_wrong_types_are_refused(exported_bases):
    with pytest.raises(TypeError):
        ExtendedMusicGen.from_base(123, 2)
    with pytest.raises(TypeError):
        ExtendedMusicGen.from_base(build_tiny_musicgen('text').lm, 2)


def test_from_base_extended_instance_merges_then_extends(exported_bases, model_logits, perturb_extension, extended):
    first = extended(exported_bases['text'], num_additional_layers=2)
    perturb_extension(first.lm)
    second = ExtendedMusicGen.from_base(first, 3)
    assert second.lm.num_base_layers == 4 and second.lm.num_additional_layers == 3
    torch.testing.assert_close(model_logits(second), model_logits(first), atol=1e-5, rtol=0)


def test_read_errors_do_not_leak_low_level_exceptions(tmp_path):
    # The loader maps every low-level torch.load failure to a CheckpointError (a ValueError).
    path = tmp_path / 'bad.pt'
    path.write_bytes(b'PK\x03\x04 not really a zip')
    with pytest.raises(CheckpointError):
        read_torch_file(path)
    assert issubclass(CheckpointError, ValueError)


# --- 14. Command line: export of an AudioCraft run, convert, info -----------------------------------

def test_export_of_an_audiocraft_musicgen_checkpoint_to_the_stock_layout(exported_bases, tmp_path, capsys,
                                                                         model_logits):
    from audiocraft_ext import cli
    reference = build_tiny_musicgen('text')
    (tmp_path / 'xp').mkdir()
    path = _training_checkpoint(reference, exported_bases['text'], tmp_path / 'xp' / 'checkpoint.th')
    assert cli.main(['export', str(path), str(tmp_path / 'model.safetensors')]) == 2
    assert '--format audiocraft' in capsys.readouterr().err
    assert cli.main(['export', str(path), str(tmp_path / 'exported'), '--format', 'audiocraft']) == 0
    stock = MusicGen.get_pretrained(str(tmp_path / 'exported'), device='cpu')
    assert torch.equal(model_logits(stock), model_logits(reference))


def test_convert_and_info_of_a_legacy_file(exported_bases, tmp_path, capsys, model_logits, extended):
    from audiocraft_ext import cli
    from audiocraft_ext.models.bases import compression_package
    model = extended(exported_bases['text'])
    model.extension_scale = 0.25
    legacy = tmp_path / 'old.pt'  # what audiocraft-ext 0.1 wrote (format version 1)
    torch.save({'format': extension_files.LEGACY_FORMAT, 'format_version': 1, 'audiocraft_ext_version': '0.1.0',
                'name': model.name, 'max_duration': model.max_duration,
                'base': {'reference': model.base_reference, 'hash': model.base_hash,
                         'lm_cfg': OmegaConf.to_yaml(model.lm.cfg), 'lm_state': model.lm.base_state_dict(),
                         'compression': compression_package(model.compression_model, model.base_reference)},
                'extension': {'config': model.lm.extension_config.to_dict(), 'state': model.lm.extension_state_dict()}},
               legacy)
    expected = model_logits(model)
    assert torch.equal(model_logits(_load(legacy)), expected)
    assert cli.main(['convert', str(legacy), str(tmp_path / 'new.safetensors')]) == 0
    assert torch.equal(model_logits(_load(tmp_path / 'new.safetensors')), expected)
    assert cli.main(['convert', str(legacy), str(tmp_path / 'new.safetensors')]) == 2  # exists: --overwrite
    assert 'already exists' in capsys.readouterr().err
    for target in (legacy, tmp_path / 'new.safetensors', model.save(tmp_path / 'extension_only', include_base=False)):
        capsys.readouterr()
        assert cli.main(['info', str(target)]) == 0
        out = capsys.readouterr().out
        assert re.search(rf'^base hash +{model.base_hash}$', out, re.M)
        assert re.search(r'^new layers +2 \(dim 32, 4 heads', out, re.M)
        assert re.search(rf'^trainable params +{model.lm.parameter_counts()[0]:,}$', out, re.M)
        assert ('yes (self-contained)' in out) == (target.name != 'extension_only')
