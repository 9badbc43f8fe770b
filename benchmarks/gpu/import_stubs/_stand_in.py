"""What the import-only stand-ins of import_stubs/ do when used: fail, naming the missing package."""
import typing as tp


class MissingPackageError(AttributeError):
    """An attribute of a stand-in module was used (`from av import x` turns it into an ImportError)."""


def missing(module: str, what: str) -> tp.Callable[[str], tp.Any]:
    """A module `__getattr__` that raises MissingPackageError for every attribute."""
    def __getattr__(name: str) -> tp.Any:
        raise MissingPackageError(f"{module}.{name}: {module} is not installed on this machine, only an "
                                  f"import-only stand-in (benchmarks/gpu/import_stubs): {what}.")
    return __getattr__
