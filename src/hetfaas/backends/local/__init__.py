"""The embedded default backend: a warm pool of worker processes on this machine."""

from .pool import LocalBackend

__all__ = ["LocalBackend"]
