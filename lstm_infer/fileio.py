"""File access shared by the readers, the model file and the command line.

Paths are taken as ``open()`` takes them: ``str``, ``bytes`` or ``os.PathLike``.
A file's *contents* are passed as ``bytearray`` or ``memoryview`` (or explicitly,
with the ``data=`` keyword where a function offers one), never as ``bytes``
standing in for a path.

Reading (:func:`read_file`)
    Only regular files are read, whole. A FIFO, device, socket or directory is
    refused before a byte is read (and without waiting for a FIFO's writer):
    ``lstm-infer inspect /dev/zero`` ends at once with an error.

Writing (:func:`atomic_writer`)
    As editors do: a temp file next to the target, fsync, rename over the target.
    A FIFO, device, socket or directory as the target is refused; a symlink is
    written through (its target is replaced, the link kept); an existing file keeps
    its permission bits (and, where we may set it, its owner) and must be writable,
    as ``cp`` requires; a new file gets the umask default. The temp name stays
    within the directory's NAME_MAX (bytes: :func:`temp_path` names other temp files
    the same way). On any error the temp file is removed and the old file is
    untouched. :func:`check_target` raises the same refusals up front, for a job
    that should not compute for minutes before finding its output unwritable.

Load budget (:func:`load_budget`, :class:`Budget`)
    One load of a weight file may produce at most ``max(256 MiB, 4 x file size)``
    bytes beyond the file itself: zip members read (inflated size) plus arrays
    materialised (stride-0 broadcasts at their full size, bfloat16 widened to
    float32). A legitimate file needs at most ~3x its size (members + arrays, both
    ~1x; bfloat16 arrays 2x); a zip bomb or a pile of broadcast views needs far
    more and is refused with a :class:`~lstm_infer.errors.TooLargeError`.
    Readers take ``budget=`` to set another limit.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import secrets
import stat

from .errors import NotRegularFileError, TooLargeError

__all__ = ["fspath", "display_name", "is_path", "as_bytes", "read_file", "open_regular", "contents",
           "atomic_writer", "check_target", "temp_path", "load_budget", "Budget", "reports_out_of_memory",
           "BUDGET_FLOOR", "BUDGET_FACTOR"]

BUDGET_FLOOR = 256 << 20
BUDGET_FACTOR = 4
_NAME_MAX = 255  # when the file system does not say


# ------------------------------------------------------------------ names

def is_path(obj) -> bool:
    """True for what ``open()`` takes as a file name: str, bytes, os.PathLike."""
    return isinstance(obj, (str, bytes, os.PathLike))


def fspath(path):
    """``os.fspath(path)``: a TypeError (as from ``open()``) for anything else."""
    return os.fspath(path)


def display_name(path) -> str:
    """The path as text for messages (undecodable bytes kept as surrogate escapes)."""
    return os.fsdecode(os.fspath(path))


def as_bytes(buf) -> bytes:
    """``bytes`` holding the contents of a bytes-like object; no copy for ``bytes``
    or for a memoryview spanning a whole ``bytes`` object (what the CLI passes)."""
    if type(buf) is bytes:
        return buf
    if (isinstance(buf, memoryview) and type(buf.obj) is bytes and buf.c_contiguous
            and buf.nbytes == len(buf.obj)):
        return buf.obj
    if isinstance(buf, (bytes, bytearray, memoryview)):
        return bytes(buf)
    raise TypeError(f"expected a path (str, bytes, os.PathLike) or a bytes-like object, "
                    f"not {type(buf).__name__}")


def _what(mode) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _require_regular(st, name, action):
    if stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"is a directory; refusing to {action} it", name)
    raise NotRegularFileError(errno.EINVAL, f"is {_what(st.st_mode)}, not a regular file; "
                              f"refusing to {action} it", name)


# ----------------------------------------------------------------- reading

def open_regular(path, action="read"):
    """``path`` opened for binary reading, if it is a regular file: a FIFO, device,
    socket or directory is refused (``NotRegularFileError`` / ``IsADirectoryError``)
    before anything is read, and without waiting for a FIFO's writer."""
    name = display_name(path)
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    fd = os.open(fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        _require_regular(os.fstat(fd), name, action)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_file(path, *, check=None) -> bytes:
    """The whole contents of the regular file ``path``.

    FIFOs, devices, sockets and directories are refused (``NotRegularFileError`` /
    ``IsADirectoryError``) before anything is read. At most the size the file had
    when opened is read. ``check(fh, size)``, if given, may look at the open file
    first (and raise); reading then starts from the beginning. A file too large for
    the process's memory raises :class:`TooLargeError`.
    """
    name = display_name(path)
    fh = open_regular(path)
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if check is not None:
            check(fh, size)
            fh.seek(0)
        try:
            return fh.read(size)
        except MemoryError:
            pass  # raised below, outside the handler, so the failed buffer is gone
    raise TooLargeError(f"{name}: not enough memory to read the {size}-byte file")


def contents(path=None, name=None, data=None, *, check=None):
    """``(bytes, name for messages)`` for a loader taking ``(path=None, name=None, *, data=None)``.

    ``path`` is a path as for ``open()`` (str, bytes, os.PathLike), read with
    :func:`read_file`; ``check(fh, size, name)`` is passed on to it. The contents
    come as ``data=`` (any bytes-like) or as a bytearray or memoryview in place of
    ``path`` (what ``open()`` refuses as a name; the CLI passes a memoryview)."""
    if data is not None:
        if path is not None:
            raise TypeError("give a path or data=, not both")
        return as_bytes(data), name or "<bytes>"
    if isinstance(path, (bytearray, memoryview)):
        return as_bytes(path), name or "<bytes>"
    src = name or display_name(path)
    return read_file(path, check=None if check is None else lambda fh, size: check(fh, size, src)), src


# ----------------------------------------------------------------- writing

def _write_target(path, name):
    """(bytes path to replace, its stat result or None for a new file)."""
    p = os.fsencode(fspath(path))
    try:
        st = os.stat(p)  # follows symlinks: the file a symlink names is the one replaced
    except FileNotFoundError:
        if os.path.lexists(p):
            raise FileNotFoundError(errno.ENOENT, "is a dangling symbolic link; refusing to write "
                                    "through it", name) from None
        if not os.path.basename(p):
            raise IsADirectoryError(errno.EISDIR, "names a directory; refusing to write it", name) from None
        return p, None
    _require_regular(st, name, "overwrite")
    if not os.access(p, os.W_OK):  # rename would replace a file that open() may not write
        raise PermissionError(errno.EACCES, "Permission denied (the existing file is not writable)", name)
    return (os.path.realpath(p) if os.path.islink(p) else p), st


def _temp_name(directory, base, suffix=b".tmp"):
    """``.<base>.<random><suffix>`` cut to fit the directory's NAME_MAX (bytes)."""
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = _NAME_MAX
    suffix = b"." + secrets.token_hex(6).encode() + suffix
    cut = base[:max(1, limit - 1 - len(suffix))]
    if len(cut) < len(base):
        try:
            cut.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start >= len(cut) - 3:  # a character cut in two: drop its head
                cut = cut[:max(1, exc.start)]
    return b"." + cut + suffix


def temp_path(directory, base, suffix=".tmp"):
    """A fresh hidden name ``<directory>/.<base>.<random><suffix>`` (a str) for a temp
    file or directory next to ``base``, cut to fit the directory's NAME_MAX in bytes."""
    d = os.fsencode(fspath(directory)) or b"."
    return os.fsdecode(os.path.join(d, _temp_name(d, os.fsencode(base), os.fsencode(suffix))))


def _named(exc, name):
    """The OSError ``exc`` naming the user's path instead of our temp file (or nothing)."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.filename != name:
        return OSError(exc.errno, exc.strerror, name)
    return exc


def check_target(path):
    """Raises the error :func:`atomic_writer` would raise for ``path`` (a FIFO, device,
    directory, dangling link or read-only file), or for a directory that is missing or
    cannot take new files: a long job checks its output before it starts."""
    name = display_name(path)
    try:
        target, _ = _write_target(path, name)
        directory = os.path.dirname(target) or b"."
        if not os.path.isdir(directory):
            if os.path.exists(directory):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", name)
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", name)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied (cannot create files in its directory)", name)
    except OSError as exc:
        raise _named(exc, name) from None


@contextlib.contextmanager
def atomic_writer(path):
    """A binary file to write ``path``'s new contents into; on a clean exit of the
    ``with`` block it is fsynced and renamed over ``path`` (see the module doc).
    On an exception nothing changes: the temp file is removed, ``path`` untouched."""
    name = display_name(path)
    try:
        target, old = _write_target(path, name)
    except OSError as exc:
        raise _named(exc, name) from None
    directory, base = os.path.split(target)
    directory = directory or b"."
    tmp = os.path.join(directory, _temp_name(directory, base))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o666)  # a new file: 0666 less the umask, like open(..., "w")
    except OSError as exc:
        raise _named(exc, name) from None
    try:
        try:
            if old is not None:
                if hasattr(os, "fchown") and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                    with contextlib.suppress(OSError):  # only root (or a group member) may
                        os.fchown(fd, old.st_uid, old.st_gid)
                os.fchmod(fd, stat.S_IMODE(old.st_mode) & 0o777)
            fh = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        named = _named(exc, name)
        if named is exc:
            raise
        raise named from None
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# ------------------------------------------------------------------ budget

def load_budget(file_size: int) -> int:
    """Bytes one load of a ``file_size``-byte file may produce (see the module doc)."""
    return max(BUDGET_FLOOR, BUDGET_FACTOR * file_size)


class Budget:
    """Counts the bytes one load produces and refuses the load past its limit."""

    __slots__ = ("src", "file_size", "limit", "used")

    def __init__(self, src: str, file_size: int, limit: int | None = None):
        self.src, self.file_size, self.used = src, file_size, 0
        self.limit = load_budget(file_size) if limit is None else limit

    def charge(self, nbytes: int, what: str) -> None:
        """Account for ``nbytes`` about to be allocated for ``what``; raise past the limit."""
        if self.used + nbytes > self.limit:
            raise TooLargeError(
                f"{self.src}: {what} needs {nbytes:,} bytes, which would bring this load to "
                f"{self.used + nbytes:,} bytes, past its budget of {self.limit:,} bytes (the larger of "
                f"{BUDGET_FLOOR >> 20} MiB and {BUDGET_FACTOR} x the {self.file_size:,}-byte file); "
                f"refusing it as corrupt or hostile")
        self.used += nbytes


def reports_out_of_memory(func):
    """Decorator for a loader ``f(path_or_data, name=None, ...)``: a MemoryError inside
    becomes a :class:`TooLargeError` naming the file (a ValueError, so the CLI prints
    one line), raised after the failed load's frames and arrays are released."""
    sig = inspect.signature(func)
    first = next(iter(sig.parameters))

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except TooLargeError:
            raise
        except MemoryError as exc:
            detail = str(exc)
        try:
            bound = sig.bind_partial(*args, **kwargs).arguments
        except TypeError:
            bound = {}
        src = bound.get("name") or (display_name(bound[first]) if is_path(bound.get(first)) else "<bytes>")
        raise TooLargeError(f"{src}: out of memory while loading the file"
                            + (f" ({detail})" if detail else ""))

    return wrapper
