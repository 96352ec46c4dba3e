"""stmap: building damage maps of whole cities from post-earthquake VHR imagery."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stmap")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
