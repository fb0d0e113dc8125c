"""Exceptions raised by the file readers and writers.

Every problem with a file's contents is a :class:`FormatError` (a ``ValueError``)
whose message starts with the file's name. A path that names something other than
a regular file is a :class:`NotRegularFileError` (an ``OSError``, like the
``IsADirectoryError`` raised for a directory).
"""


class FormatError(ValueError):
    """A file is truncated, corrupted or not in the format it claims to be."""


class UnsafeFileError(FormatError):
    """A pickle asks for a global outside the allow-list; nothing was executed."""


class TooLargeError(FormatError, MemoryError):
    """Loading a file would produce more bytes than its load budget allows (see
    :func:`lstm_infer.fileio.load_budget`), or the process ran out of memory while
    loading it. Both a ``FormatError`` and a ``MemoryError``."""


class NotRegularFileError(OSError):
    """A path names a FIFO, device or socket where a regular file is needed."""
