"""Errors about files: what is wrong with a file users hand us, and what to do about it."""


class CheckpointError(ValueError):
    """A file is not what it should be (missing, truncated, of the wrong kind or version)."""


class IntegrityError(CheckpointError):
    """A file's content differs from what was written: a checksum, a key, a shape or a value is off."""


class UnsafeFileError(CheckpointError):
    """A file that only full unpickling could load (which can run code) and no opt-in to do it."""


class OverwriteError(FileExistsError):
    """A write would replace a base model, another model's files, or an existing output."""
