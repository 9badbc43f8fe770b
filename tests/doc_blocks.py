"""The fenced code block a doc page marks with `<!-- MARKER -->` on the line before it: what the
tests of documented commands run as written, in a new shell after `make` (`new_shell_script`).
Test modules import this file as they import `browser`."""
import os
from pathlib import Path
import sys


def documented_block(page: Path, marker: str) -> str:
    """The body of the first fenced block after `<!-- MARKER -->` in `page`."""
    text = page.read_text()
    start = text.index(f'<!-- {marker} -->')
    body = text.index('\n', text.index('```', start)) + 1
    return text[body:text.index('```', body)]


README = Path(__file__).resolve().parents[1] / 'README.md'
DOCUMENTED_VENV = '~/.cache/audiocraft-ext/venv'


def new_shell_script(command: str) -> str:
    """`command` as typed in a new shell after `make`: README's activation line first, naming this
    test's venv where AUDIOCRAFT_EXT_VENV put it elsewhere (README says to use that folder then)."""
    activate = documented_block(README, 'new-shell:activate').split('#')[0].strip()
    assert activate.startswith(f'source {DOCUMENTED_VENV}/bin/activate'), activate
    return activate.replace(DOCUMENTED_VENV, sys.prefix) + '\n' + command


def new_shell_env(**extra: str) -> dict:
    """This process's environment as a new login shell has it: PATH without this test's venv."""
    venv_bin = str(Path(sys.prefix) / 'bin')
    path = os.pathsep.join(part for part in os.environ['PATH'].split(os.pathsep) if part != venv_bin)
    env = {key: value for key, value in os.environ.items() if key not in ('VIRTUAL_ENV', 'PYTHONHOME')}
    return dict(env, PATH=path, **extra)
