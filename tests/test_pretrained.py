"""The tiny pretrained MusicGen shipped with the package (`models.shipped`): its files are what their
recipe says, stock AudioCraft loads it, a damaged file is refused, and scripts/make_pretrained.py
rebuilds a base that the demo extends, as the docs say."""
import json
from pathlib import Path
import shutil
import subprocess
import sys

from audiocraft.models import MusicGen
import pytest
import safetensors
import torch

from audio_checks import assert_audible
from audiocraft_ext import cli
from audiocraft_ext.io.errors import CheckpointError
from audiocraft_ext.models.shipped import FILES, PRETRAINED_DIR, export_pretrained, read_part, read_recipe

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_files_match_their_recipe():
    recipe = read_recipe()
    for part in FILES:
        package = read_part(part)
        assert package['best_state'] and 'xp.cfg' in package
        assert recipe[part]['config'] == package['xp.cfg']
    codec = recipe['codec']
    # What scripts/make_pretrained.py measured on the held-out clips of both domains.
    assert min(codec['codes_used']) >= 128 and min(codec['perplexity']) >= 32
    assert codec['mel_distance'] < 0.5 * codec['mel_distance_untrained']
    size = sum((PRETRAINED_DIR / name).stat().st_size for name in FILES.values())
    assert size < 12_000_000, size


def test_a_damaged_file_is_refused(tmp_path):
    folder = tmp_path / 'pretrained'
    shutil.copytree(PRETRAINED_DIR, folder)
    data = bytearray((folder / FILES['base_lm']).read_bytes())
    data[-10] ^= 0xFF
    (folder / FILES['base_lm']).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match='sha256'):
        read_part('base_lm', folder)
    read_part('codec', folder)  # the other part is intact


def test_stock_musicgen_loads_and_generates_the_exported_base(tmp_path):
    directory = export_pretrained(tmp_path / 'base')
    model = MusicGen.get_pretrained(str(directory), device='cpu')
    assert model.sample_rate == 16000 and model.lm.card == 256
    model.set_generation_params(duration=0.5)
    torch.manual_seed(0)
    wav = model.generate(['Bach chorale in a minor key, church organ'])
    assert wav.shape[:2] == (1, 1) and wav.shape[-1] == 8000
    assert_audible(wav, 'a clip of the stock MusicGen')


@pytest.mark.slow
def test_make_pretrained_rebuilds_a_base_with_the_shipped_codec(tmp_path):
    """`scripts/make_pretrained.py --codec-from` at a tiny size: a folder `models.shipped` reads."""
    out = tmp_path / 'my_base'
    command = [sys.executable, str(REPO / 'scripts' / 'make_pretrained.py'), '--out', str(out), '--work',
               str(tmp_path / 'work'), '--codec-from', str(PRETRAINED_DIR), '--clips', '10', '--duration', '2',
               '--base-updates', '20']
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    recipe = read_recipe(out)
    assert recipe['codec']['reused_from'] == str(PRETRAINED_DIR)
    assert recipe['base_lm']['recipe']['updates'] == 20 and recipe['data']['clips_per_domain'] == 10
    with safetensors.safe_open(str(out / FILES['codec']), framework='pt') as rebuilt, \
            safetensors.safe_open(str(PRETRAINED_DIR / FILES['codec']), framework='pt') as shipped:
        assert all(torch.equal(rebuilt.get_tensor(k), shipped.get_tensor(k)) for k in shipped.keys())
    assert read_part('base_lm', out)['best_state'].keys() == read_part('base_lm')['best_state'].keys()
    assert json.loads((out / 'recipe.json').read_text())['made_by'] == 'scripts/make_pretrained.py'
    # `audiocraft-ext demo --pretrained DIR` extends the rebuilt base (README).
    demo_out = tmp_path / 'demo'
    assert cli.main(['demo', '--quick', '--pretrained', str(out), '--out', str(demo_out),
                     '--cache-dir', str(tmp_path / 'cache')]) == 0
    summary = json.loads((demo_out / 'summary.json').read_text())
    assert summary['base']['pretrained'] == str(out.resolve())
