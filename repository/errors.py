"""The one error of the format: a version folder (or a file in it) that must not be served."""

from __future__ import annotations


class VersionError(ValueError):
    """A version folder that must not be served: incomplete, tampered with, or of an unknown format.
    The message names the folder or file and the first problem found, in one line."""
