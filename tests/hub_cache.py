"""A repository in huggingface_hub's cache layout, as a download leaves it: how the tests load hub
ids offline. Test modules import this file as they import `browser`."""
from pathlib import Path
import shutil
import typing as tp


def hub_repo(cache: Path, repo_id: str, files: tp.Dict[str, Path], commit: str = 'a' * 40) -> None:
    """Put `files` ({name in the repo: source file}) in `cache` as the snapshot of `repo_id`'s main."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)
    (folder / 'refs').mkdir()
    (folder / 'refs' / 'main').write_text(commit)
