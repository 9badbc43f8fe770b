"""The fenced code block a doc page marks with `<!-- MARKER -->` on the line before it: what the
tests of documented commands run as written. Test modules import this file as they import `browser`."""
from pathlib import Path


def documented_block(page: Path, marker: str) -> str:
    """The body of the first fenced block after `<!-- MARKER -->` in `page`."""
    text = page.read_text()
    start = text.index(f'<!-- {marker} -->')
    body = text.index('\n', text.index('```', start)) + 1
    return text[body:text.index('```', body)]
