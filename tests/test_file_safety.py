"""Files people share cannot hurt them.

- A pickle payload that would create a marker file, planted in every kind of file we read, never
  runs on any loading path, even with `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` (the environment variable
  that turns torch's default unpickling back on); only the documented opt-in loads such a file.
- Nothing we write replaces a base or the run an export reads; an existing output is replaced only
  with `overwrite`; a failure between the two files of an export leaves the previous export whole.
- A flipped byte, a missing key, a NaN weight, an altered embedded base: each its own clear error.
- Extensions on the Hugging Face hub load from a pre-filled cache, offline, like PEFT adapters.
"""
import argparse
import json
import os
from pathlib import Path
import shutil
import typing as tp

from omegaconf import OmegaConf
import pytest
import safetensors.torch
import torch

from audiocraft.models import MusicGen

from hub_cache import hub_repo
from audiocraft_ext import ExtendedMusicGen, cli, evaluate
from audiocraft_ext.io import extension_files
from audiocraft_ext.io.errors import CheckpointError, IntegrityError, OverwriteError, UnsafeFileError
from audiocraft_ext.io.exported_layout import COMPRESSION_FILE, LM_FILE
from audiocraft_ext.io.torch_files import read_torch_file
from audiocraft_ext.models.extended_musicgen import load_base
from audiocraft_ext.models.tiny import build_tiny_musicgen


pytestmark = pytest.mark.usefixtures('single_thread_torch')


class Payload:
    """Unpickling this runs `touch MARKER`: what a hostile checkpoint would do."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    """The file a payload would create; torch told by the environment to unpickle by default."""
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    path = tmp_path / 'PAYLOAD_RAN'
    yield path
    assert not path.exists(), 'a pickle payload ran'


def _plant(path: Path, marker: Path) -> Path:
    """Re-save the torch file at `path` with a payload beside its content."""
    pkg = torch.load(path, map_location='cpu', weights_only=False)  # our own clean test file
    pkg['evil'] = Payload(marker)
    torch.save(pkg, path)
    return path


@pytest.fixture(scope='module')
def extended(perturb_extension):
    """`extended(...)`: see `build`."""
    def build(base, layers: int = 1) -> ExtendedMusicGen:
        model = ExtendedMusicGen.from_base(str(base) if isinstance(base, Path) else base, layers, device='cpu')
        perturb_extension(model.lm)
        return model
    return build


def _legacy_file(model: ExtendedMusicGen, path: Path, include_base: bool = True) -> Path:
    """A file in the format of audiocraft-ext 0.1 (format version 1, torch.save'd)."""
    from audiocraft_ext.models.bases import compression_package
    from audiocraft_ext.models.packages import lm_config
    base = {'reference': model.base_reference, 'hash': model.base_hash}
    if include_base:
        base.update(lm_cfg=OmegaConf.to_yaml(lm_config(model.lm)), lm_state=model.lm.base_state_dict(),
                    compression=compression_package(model.compression_model, model.base_reference))
    torch.save({'format': extension_files.LEGACY_FORMAT, 'format_version': 1, 'audiocraft_ext_version': '0.1.0',
                'name': model.name, 'max_duration': model.max_duration, 'base': base,
                'extension': {'config': model.lm.extension_config.to_dict(), 'state': model.lm.extension_state_dict()}}, path)
    return path


def _training_checkpoint(model: MusicGen, compression: str, path: Path) -> Path:
    """An AudioCraft MusicGen solver checkpoint.th (OmegaConf config, as AudioCraft pickles it)."""
    cfg = OmegaConf.create(OmegaConf.to_container(model.lm.cfg))
    cfg.compression_model_checkpoint = compression
    cfg.solver = 'musicgen'
    torch.save({'xp.cfg': cfg, 'best_state': {'model': model.lm.state_dict()}, 'epoch': 3}, path)
    return path


# ---- hostile files ---------------------------------------------------------------------------

def test_a_payload_in_an_extension_file_never_runs(exported_bases, tmp_path, marker, extended):
    model = extended(exported_bases['text'])
    for include_base in (True, False):
        path = _plant(_legacy_file(model, tmp_path / f'legacy_{include_base}.pt', include_base), marker)
        with pytest.raises(UnsafeFileError, match='full unpickling'):
            ExtendedMusicGen.get_pretrained(path, device='cpu')
        with pytest.raises(UnsafeFileError):
            ExtendedMusicGen.from_base(str(path), 1, device='cpu')
        assert cli.main(['convert', str(path), str(tmp_path / 'converted.safetensors')]) == 2
        assert cli.main(['info', str(path)]) == 2
        assert not (tmp_path / 'converted.safetensors').exists()


@pytest.mark.parametrize('planted', [LM_FILE, COMPRESSION_FILE])
def test_a_payload_in_an_exported_base_never_runs(planted, exported_bases, tmp_path, marker, extended):
    base = shutil.copytree(exported_bases['text'], tmp_path / 'base')
    extension_only = extended(base).save(tmp_path / 'extension_only.safetensors', include_base=False)
    _plant(base / planted, marker)
    for load in (lambda: ExtendedMusicGen.from_base(str(base), 1, device='cpu'),
                 lambda: ExtendedMusicGen.from_base('//pretrained/' + str(base), 1, device='cpu'),
                 lambda: ExtendedMusicGen.get_pretrained(extension_only, device='cpu'),  # the base it points to
                 lambda: load_base(str(base))):
        with pytest.raises(CheckpointError, match=planted):
            load()


def test_a_payload_in_an_audiocraft_checkpoint_or_its_codec_never_runs(exported_bases, tmp_path, marker):
    tiny = build_tiny_musicgen('text')
    codec = shutil.copy(exported_bases['text'] / COMPRESSION_FILE, tmp_path / COMPRESSION_FILE)
    checkpoint = _training_checkpoint(tiny, f'//pretrained/{codec}', tmp_path / 'checkpoint.th')
    assert ExtendedMusicGen.from_base(str(checkpoint), 1, device='cpu')  # clean: it loads
    _plant(Path(codec), marker)  # the codec the checkpoint names
    with pytest.raises(UnsafeFileError, match=COMPRESSION_FILE):
        ExtendedMusicGen.from_base(str(checkpoint), 1, device='cpu')
    _plant(checkpoint, marker)
    with pytest.raises(UnsafeFileError, match='checkpoint.th'):
        ExtendedMusicGen.from_base(str(checkpoint), 1, device='cpu')


def test_a_payload_in_a_training_run_never_runs(exported_bases, egs, dora_dir, tmp_path, marker, run_xp):
    argv = ['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={exported_bases["text"]}',
            f'egs_root={egs}', 'optim.epochs=1', 'label=hostile']
    xp, _ = run_xp(argv)
    checkpoint = _plant(xp.folder / 'checkpoint.th', marker)
    # audiocraft-ext export, the API, evaluation, a base given as the run, resuming it
    assert cli.main(['export', str(checkpoint), str(tmp_path / 'out.safetensors')]) == 2
    with pytest.raises(UnsafeFileError):
        ExtendedMusicGen.from_solver_checkpoint(checkpoint, device='cpu')
    with pytest.raises(evaluate.EvaluationError, match='full unpickling'):
        evaluate.run([f'checkpoint={checkpoint}'])
    with pytest.raises(UnsafeFileError):
        run_xp([*argv[:1], f'pretrained_model_checkpoint={checkpoint}', *argv[2:4], 'label=on_top'])
    with pytest.raises(UnsafeFileError):
        run_xp(argv)  # the same command again resumes from checkpoint.th
    assert not (tmp_path / 'out.safetensors').exists()


def test_a_payload_in_a_feature_cache_entry_is_a_miss(exported_bases, marker, tmp_path, model_logits, extended):
    model = extended(exported_bases['text'])
    cache = model.lm.use_feature_cache(tmp_path / 'cache')
    expected = model_logits(model)
    for entry in cache.folder.rglob('*.pt'):
        torch.save({'hidden': Payload(marker)}, entry)
    assert any(cache.folder.rglob('*.pt'))
    assert torch.equal(model_logits(model), expected)  # recomputed, never unpickled


def test_a_file_that_needs_unpickling_loads_only_with_the_opt_in(exported_bases, tmp_path):
    """The opt-in for trusted third-party files: a harmless class that is not allow-listed (Namespace)."""
    checkpoint = _training_checkpoint(build_tiny_musicgen('text'),
                                      f'//pretrained/{exported_bases["text"] / COMPRESSION_FILE}',
                                      tmp_path / 'checkpoint.th')
    pkg = torch.load(checkpoint, weights_only=False)
    pkg['args'] = argparse.Namespace(steps=3)
    torch.save(pkg, checkpoint)
    with pytest.raises(UnsafeFileError, match='allow_pickle=True') as error:
        ExtendedMusicGen.from_base(str(checkpoint), 1, device='cpu')
    assert 'argparse.Namespace' in str(error.value) and 'docs/SECURITY.md' in str(error.value)
    model = ExtendedMusicGen.from_base(str(checkpoint), 1, device='cpu', allow_pickle=True)
    assert model.lm.num_base_layers == 2
    assert read_torch_file(checkpoint, allow_pickle=True)['args'].steps == 3


# ---- writes -----------------------------------------------------------------------------------

def test_saving_or_exporting_onto_the_base_is_refused_even_with_overwrite(exported_bases, tmp_path, file_digests,
                                                                          extended):
    base = shutil.copytree(exported_bases['text'], tmp_path / 'base')
    before = file_digests(base)
    model = extended(base)
    for overwrite in (False, True):
        for write in (lambda: model.save(base, overwrite=overwrite),
                      lambda: model.save(base / 'state_dict.bin', overwrite=overwrite),
                      lambda: model.save(base / 'inside.safetensors', overwrite=overwrite),
                      lambda: model.save(tmp_path, overwrite=overwrite),  # a folder holding the base
                      lambda: model.export_audiocraft(base, overwrite=overwrite)):
            with pytest.raises(OverwriteError, match='the base model'):
                write()
    assert file_digests(base) == before
    # Extending a saved extension again: its file is the new model's base.
    first = model.save(tmp_path / 'first.safetensors')
    second = extended(first)
    with pytest.raises(OverwriteError, match='the base model'):
        second.save(first, overwrite=True)


def test_an_existing_output_is_replaced_only_with_overwrite(exported_bases, other_text_base, tmp_path, file_digests,
                                                            extended):
    model = extended(exported_bases['text'])
    other = shutil.copytree(other_text_base, tmp_path / 'other_model')
    before = file_digests(other)
    with pytest.raises(OverwriteError, match='already exists \\(an exported MusicGen\\).*overwrite=True'):
        model.export_audiocraft(other)
    saved = model.save(tmp_path / 'model.safetensors')
    with pytest.raises(OverwriteError, match='an extension written by ExtendedMusicGen.save'):
        model.save(saved)
    assert file_digests(other) == before
    model.export_audiocraft(other, overwrite=True)
    assert MusicGen.get_pretrained(str(other), device='cpu').lm.transformer.layers.__len__() == 3


def test_export_of_a_run_never_writes_onto_the_run(exported_bases, egs, dora_dir, tmp_path, file_digests, run_xp):
    xp, _ = run_xp(['solver=extended_musicgen_debug', f'pretrained_model_checkpoint={exported_bases["text"]}',
                    f'egs_root={egs}', 'optim.epochs=1', 'label=export_onto_run'])
    before = file_digests(xp.folder)
    checkpoint = xp.folder / 'checkpoint.th'
    for out in (checkpoint, xp.folder, xp.folder / 'model.safetensors'):
        for extra in ([], ['--overwrite']):
            assert cli.main(['export', str(checkpoint), str(out), *extra]) == 2
    assert file_digests(xp.folder) == before


def test_a_failure_between_the_two_files_of_an_export_keeps_the_previous_export(
        exported_bases, tmp_path, monkeypatch, file_digests, model_logits, perturb_extension, extended):
    model = extended(exported_bases['text'])
    out = model.export_audiocraft(tmp_path / 'export')
    before = file_digests(out)
    expected = model_logits(MusicGen.get_pretrained(str(out), device='cpu'))
    perturb_extension(model.lm, seed=5)
    real_save = torch.save

    def die_on_the_second_file(obj, path, *args, **kwargs):
        if str(path).endswith(COMPRESSION_FILE):
            raise OSError('disk full')
        return real_save(obj, path, *args, **kwargs)
    monkeypatch.setattr(torch, 'save', die_on_the_second_file)
    with pytest.raises(OSError, match='disk full'):
        model.export_audiocraft(out, overwrite=True)
    monkeypatch.undo()
    assert file_digests(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ['export']
    assert torch.equal(model_logits(MusicGen.get_pretrained(str(out), device='cpu')), expected)


def test_prepare_data_writes_nothing_when_an_input_is_bad(tmp_path, monkeypatch, file_digests):
    from audiocraft_ext.data import prepare
    from audiocraft_ext.data.synth_dataset import write_tone_folder
    write_tone_folder(tmp_path / 'audio', num_files=5, duration=0.5)
    sidecar = tmp_path / 'audio' / 'tone_000.json'
    sidecar.write_text(json.dumps({'description': 'kept', 'artist': 'me'}))
    captions = (tmp_path / 'audio' / 'captions.csv').read_text().splitlines()
    (tmp_path / 'missing.csv').write_text('\n'.join(captions[:-1]) + '\n')  # the last file has no caption
    before = file_digests(tmp_path / 'audio')
    with pytest.raises(prepare.DataPreparationError, match='have no caption'):
        prepare.prepare_data(tmp_path / 'audio', tmp_path / 'egs', captions=tmp_path / 'missing.csv')
    assert file_digests(tmp_path / 'audio') == before and not (tmp_path / 'egs').exists()
    # A write that fails halfway leaves every sidecar whole (old content or new, never a part).
    real_replace = os.replace
    calls = []

    def fail_third(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError('disk full')
        return real_replace(src, dst)
    monkeypatch.setattr(os, 'replace', fail_third)
    with pytest.raises(OSError, match='disk full'):
        prepare.prepare_data(tmp_path / 'audio', tmp_path / 'egs', captions=tmp_path / 'audio' / 'captions.csv')
    monkeypatch.undo()
    for path in (tmp_path / 'audio').glob('*.json'):
        json.loads(path.read_text())  # every sidecar parses
    assert json.loads(sidecar.read_text())['artist'] == 'me'
    assert not list((tmp_path / 'audio').glob('.*'))  # no temporary left


# ---- integrity ---------------------------------------------------------------------------------

def _flip_a_byte(path: Path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_caught(exported_bases, tmp_path, extended):
    model = extended(exported_bases['text'])
    directory = model.save(tmp_path / 'model')
    _flip_a_byte(directory / 'extension.safetensors')
    with pytest.raises(IntegrityError, match='extension.safetensors does not match the sha256'):
        ExtendedMusicGen.get_pretrained(directory, device='cpu')
    single = model.save(tmp_path / 'model.safetensors')
    _flip_a_byte(single)
    with pytest.raises(IntegrityError, match='do not match the sha256 in its metadata'):
        ExtendedMusicGen.get_pretrained(single, device='cpu')
    incomplete = model.save(tmp_path / 'incomplete')
    (incomplete / 'compression.yaml').unlink()
    with pytest.raises(IntegrityError, match='lacks compression.yaml, listed in extension_config.json'):
        ExtendedMusicGen.get_pretrained(incomplete, device='cpu')


def _rewrite_extension(directory: Path, change: tp.Callable[[tp.Dict[str, torch.Tensor]], None]) -> None:
    """Edit extension.safetensors and give it a matching sha256 (a consistent but wrong file)."""
    from audiocraft_ext.io.hashing import file_sha256
    path = directory / 'extension.safetensors'
    state = safetensors.torch.load_file(str(path))
    change(state)
    safetensors.torch.save_file(state, str(path))
    config = json.loads((directory / extension_files.CONFIG_NAME).read_text())
    config['files']['extension.safetensors'] = file_sha256(path)
    (directory / extension_files.CONFIG_NAME).write_text(json.dumps(config))


def test_missing_key_wrong_shape_and_nan_each_get_their_error(exported_bases, tmp_path, extended):
    model = extended(exported_bases['text'])
    cases = {
        'missing: layers.0.linear2.weight': lambda state: state.pop('layers.0.linear2.weight'),
        'wrong shape: layers.0.linear1.weight': lambda state: state.update(
            {'layers.0.linear1.weight': state['layers.0.linear1.weight'][:-1]}),
        'NaN or infinite weights in extension.layers.0.norm1.weight': lambda state: state.update(
            {'layers.0.norm1.weight': torch.full_like(state['layers.0.norm1.weight'], float('nan'))}),
    }
    for index, (message, change) in enumerate(cases.items()):
        directory = model.save(tmp_path / f'model{index}')
        _rewrite_extension(directory, change)
        with pytest.raises(IntegrityError, match=message.replace('(', '\\(')):
            ExtendedMusicGen.get_pretrained(directory, device='cpu')


def test_a_config_with_a_negative_max_duration_is_refused(exported_bases, tmp_path, extended):
    directory = extended(exported_bases['text']).save(tmp_path / 'model')
    config_path = directory / extension_files.CONFIG_NAME
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), 'max_duration': -5.0}))
    with pytest.raises(CheckpointError, match='max_duration=-5.0, not a positive number of seconds'):
        ExtendedMusicGen.get_pretrained(directory, device='cpu')


def test_prepare_data_names_a_captions_file_that_is_not_utf8(tmp_path, file_digests):
    from audiocraft_ext.data import prepare
    from audiocraft_ext.data.synth_dataset import write_tone_folder
    write_tone_folder(tmp_path / 'audio', num_files=2, duration=0.5)
    captions = tmp_path / 'latin1.csv'
    captions.write_bytes('file,description\ntone_000.wav,caf\xe9 jazz\ntone_001.wav,tango\n'.encode('latin-1'))
    before = file_digests(tmp_path / 'audio')
    with pytest.raises(prepare.DataPreparationError, match='is not UTF-8 text .byte 0xe9.*iconv -f latin1'):
        prepare.prepare_data(tmp_path / 'audio', tmp_path / 'egs', captions=captions)
    assert file_digests(tmp_path / 'audio') == before and not (tmp_path / 'egs').exists()
    captions.write_bytes('\ufefffile,description\ntone_000.wav,caf\xe9 jazz\ntone_001.wav,tango\n'.encode('utf-8'))
    assert prepare.read_captions(captions)['tone_000.wav']['description'] == 'caf\xe9 jazz'  # a BOM is fine


def test_an_altered_embedded_base_is_named_as_such(exported_bases, tmp_path, extended):
    from audiocraft_ext.io.hashing import file_sha256
    directory = extended(exported_bases['text']).save(tmp_path / 'model')
    path = directory / 'base_lm.safetensors'
    state = safetensors.torch.load_file(str(path))
    key = next(k for k in state if k.endswith('linear1.weight'))
    state[key] = state[key] + 0.5
    safetensors.torch.save_file(state, str(path))
    config = json.loads((directory / extension_files.CONFIG_NAME).read_text())
    config['files']['base_lm.safetensors'] = file_sha256(path)
    (directory / extension_files.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(IntegrityError, match='The base embedded in .* was altered'):
        ExtendedMusicGen.get_pretrained(directory, device='cpu')


def test_a_moved_base_names_its_hash_and_the_override(exported_bases, tmp_path, monkeypatch, model_logits, extended):
    base = shutil.copytree(exported_bases['text'], tmp_path / 'base')
    monkeypatch.chdir(tmp_path)
    model = extended(Path('base'))  # relative: stored absolute
    assert model.base_reference == str(base.resolve())
    extension_only = model.save('extension_only.safetensors', include_base=False)
    monkeypatch.chdir(exported_bases['text'].parent)
    expected = model_logits(model)
    assert torch.equal(model_logits(ExtendedMusicGen.get_pretrained(extension_only, device='cpu')), expected)
    moved = base.rename(tmp_path / 'moved')
    with pytest.raises(CheckpointError, match=f"base='NEW_LOCATION'.*{model.base_hash}"):
        ExtendedMusicGen.get_pretrained(extension_only, device='cpu')
    loaded = ExtendedMusicGen.get_pretrained(extension_only, device='cpu', base=str(moved))
    assert torch.equal(model_logits(loaded), expected)


def test_a_run_signature_needs_its_dora_folder_in_the_api():
    with pytest.raises(CheckpointError, match='//sig/abc: say which Dora folder'):
        ExtendedMusicGen.from_base('//sig/abc', 1, device='cpu')


# ---- the hub ------------------------------------------------------------------------------------

def test_hub_ids_load_offline_from_a_filled_cache(exported_bases, tmp_path, monkeypatch, model_logits,
                                                  perturb_extension):
    import huggingface_hub.constants
    cache = tmp_path / 'hub'
    hub_repo(cache, 'someone/tiny-musicgen', {name: exported_bases['text'] / name
                                               for name in (LM_FILE, COMPRESSION_FILE)})
    monkeypatch.setenv('AUDIOCRAFT_CACHE_DIR', str(cache))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    model = ExtendedMusicGen.from_base('someone/tiny-musicgen', 1, device='cpu')
    assert model.base_reference == 'someone/tiny-musicgen'
    perturb_extension(model.lm)
    expected = model_logits(model)
    # What save(dir) writes is what one uploads: an extension-only directory pointing to the base repo, in its own repo.
    extension_only = model.save(tmp_path / 'upload', include_base=False)
    hub_repo(cache, 'someone/tiny-extension', {p.name: p for p in extension_only.iterdir()})
    loaded = ExtendedMusicGen.get_pretrained('someone/tiny-extension', device='cpu')
    assert torch.equal(model_logits(loaded), expected)
    assert loaded.base_reference == 'someone/tiny-musicgen'
    deeper = ExtendedMusicGen.from_base('someone/tiny-extension', 1, device='cpu')  # merged, extended again
    assert deeper.lm.num_base_layers == 3 and deeper.base_reference == 'someone/tiny-extension'
    with pytest.raises(CheckpointError, match='is a MusicGen, not an extension'):
        ExtendedMusicGen.get_pretrained('someone/tiny-musicgen', device='cpu')
    with pytest.raises(CheckpointError, match='someone/absent'):
        ExtendedMusicGen.from_base('someone/absent', 1, device='cpu')
