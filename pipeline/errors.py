"""Errors shared by every room of vl2prep: a configuration that cannot work is a `ConfigError`.

It lives here, not beside any one reader, so that config parsing in `jobs`, the readers, filters and dedup
options all raise the same type, and the command line turns it into exit status 2 before Ray starts.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the key and what to change."""
