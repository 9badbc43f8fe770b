"""Where audiocraft-ext keeps what it can rebuild (replay sets, the demo's artefacts, benchmark tasks).

One root for every cache of ours, read when asked (not at import), so a process that sets the
environment first, a test session for one, is obeyed:

1. `AUDIOCRAFT_EXT_CACHE`, if set;
2. else `$XDG_CACHE_HOME/audiocraft-ext`, if XDG_CACHE_HOME is set to an absolute path (the XDG
   base directory rule: a relative one is ignored);
3. else `~/.cache/audiocraft-ext`.

The locked virtual environment that scripts/setup.sh makes lives in `~/.cache/audiocraft-ext/venv`
whatever these say (it is the setup's, `AUDIOCRAFT_EXT_VENV` moves it).
"""
import os
from pathlib import Path

CACHE_ENV = 'AUDIOCRAFT_EXT_CACHE'


def cache_root() -> Path:
    """The root of audiocraft-ext's caches (see the module's docstring for the order)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get('XDG_CACHE_HOME')
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / 'audiocraft-ext'
    return Path.home() / '.cache' / 'audiocraft-ext'


def cache_dir(name: str) -> Path:
    """`cache_root() / name`: the folder of one kind of cache ('replay', 'demo', ...). Not created."""
    return cache_root() / name
