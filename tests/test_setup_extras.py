"""Optional extras: `make setup EXTRAS="..."` installs them, every later `make` keeps them, and
each one the docs name is in the lock file.

scripts/setup.sh runs for real (system checks included) against a throwaway venv folder, with a
stand-in `uv` first on PATH that records its arguments: the venv this test runs in is left alone.
"""
import os
from pathlib import Path
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from doc_blocks import README, documented_block

ROOT = README.parent
EXTRAS_COMMAND = documented_block(README, 'new-shell:extras').split('#')[0].strip()
DOCUMENTED_EXTRAS = re.fullmatch(r'make setup EXTRAS="([\w ]+)"', EXTRAS_COMMAND).group(1).split()


@pytest.fixture
def stand_in(tmp_path):
    """A `uv` 0.13.9 that logs each call's arguments, and a venv whose python accepts any script."""
    bin_dir, venv = tmp_path / 'bin', tmp_path / 'venv'
    (venv / 'bin').mkdir(parents=True)
    bin_dir.mkdir()
    calls = tmp_path / 'uv_calls'
    uv = bin_dir / 'uv'
    uv.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "uv 0.13.9"; exit 0; }\n'
                  f'echo "$@" >> {calls}\n'
                  'case "$*" in *"--extra nope"*) echo "error: Extra `nope` is not defined" >&2; exit 2;; esac\n')
    python = venv / 'bin' / 'python'
    python.write_text('#!/bin/sh\ncat > /dev/null\n')
    for script in (uv, python):
        script.chmod(0o755)
    env = dict(os.environ, AUDIOCRAFT_EXT_VENV=str(venv), PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    env.pop('MAKEFLAGS', None)
    return env, calls, venv


def make_setup(env, *args):
    return subprocess.run(['make', '-s', '-C', str(ROOT), 'setup', *args], env=env, capture_output=True,
                          text=True, timeout=300)


def synced_extras(calls: Path) -> list:
    """The `--extra` names of each `uv sync` call, in order."""
    lines = [line.split() for line in calls.read_text().splitlines() if line.startswith('sync')]
    return [sorted(words[i + 1] for i, word in enumerate(words) if word == '--extra') for words in lines]


@pytest.mark.skipif(shutil.which('make') is None, reason='make is what .ci/run installs first')
def test_extras_asked_once_are_synced_by_every_later_make(stand_in):
    """README's command as typed, then a plain `make setup` (what `make demo` and `make test` run first)."""
    env, calls, venv = stand_in
    first = make_setup(env, *shlex.split(EXTRAS_COMMAND)[2:])
    assert first.returncode == 0, first.stderr
    again = make_setup(env)
    assert again.returncode == 0, again.stderr
    assert synced_extras(calls) == [sorted(['test', *DOCUMENTED_EXTRAS])] * 2
    assert f'source {venv}/bin/activate' in again.stdout


@pytest.mark.skipif(shutil.which('make') is None, reason='make is what .ci/run installs first')
def test_an_unknown_extra_fails_and_is_not_kept(stand_in):
    env, calls, _ = stand_in
    assert make_setup(env, 'EXTRAS=tensorboard').returncode == 0
    bad = make_setup(env, 'EXTRAS=nope')
    assert bad.returncode != 0 and 'an unknown extra name?' in bad.stderr
    assert make_setup(env).returncode == 0
    assert synced_extras(calls)[-1] == ['tensorboard', 'test']


@pytest.mark.parametrize('extra', DOCUMENTED_EXTRAS)
def test_each_documented_extra_is_in_the_lock(extra):
    """`uv sync --frozen --dry-run` resolves it from uv.lock alone (an extra missing there fails)."""
    uv = shutil.which('uv') or subprocess.run(['python3', '-c', 'import uv; print(uv.find_uv_bin())'],
                                             capture_output=True, text=True).stdout.strip()
    assert uv, 'scripts/setup.sh installs uv (pip install --user)'
    result = subprocess.run([uv, 'sync', '--frozen', '--dry-run', '--extra', 'test', '--extra', extra], cwd=ROOT,
                            env=dict(os.environ, UV_PROJECT_ENVIRONMENT=sys.prefix), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
