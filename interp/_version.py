"""The package's version, in one place: ``interp.__version__``, ``interp --version`` and the wheel's metadata
(``pyproject.toml`` reads it from here) all take it from this line."""

__version__ = "0.1.0"
