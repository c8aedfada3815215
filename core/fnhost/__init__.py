"""fnhost: a self-hosted, plugin-based serverless functions platform."""

from fnhost.hookspecs import hookimpl

__all__ = ["hookimpl"]
__version__ = "0.1.0"
