"""The package version (a module of its own, so the lowest layer can read it without importing the package)."""

__version__ = "0.2.0"
