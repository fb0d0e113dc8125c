"""Exceptions raised by the file readers and writers (all are ``ValueError``)."""


class FormatError(ValueError):
    """A file is truncated, corrupted or not in the format it claims to be."""


class UnsafeFileError(FormatError):
    """A pickle asks for a global outside the allow-list; nothing was executed."""
