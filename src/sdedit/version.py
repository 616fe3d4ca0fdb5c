"""The package version, in one place (read by the package and written into every output's metadata)."""

__version__ = "0.1.0"
