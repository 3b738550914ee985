"""File-system safety helpers: bounded reads of regular files only, outputs
that would overwrite inputs, atomic writes, and one-line OSError messages.

Reading (:func:`read_regular_file`): the path is ``os.stat``-ed first and only a
regular file is opened (a FIFO would block forever, ``/dev/zero`` would be read
without end); it is opened with ``O_NONBLOCK`` and ``fstat``-ed again (so a file
swapped for a FIFO between the two calls is still refused), and its size is
checked against a limit before anything is read.  Default limits:
:data:`DEFAULT_MAX_DATA_BYTES` (2 GiB, ``MICROGPT_C_MAX_DATA_BYTES``) for data
files and :data:`DEFAULT_MAX_CHECKPOINT_BYTES` (16 GiB,
``MICROGPT_C_MAX_CHECKPOINT_BYTES``) for checkpoints; the environment variables
(a number of bytes) change them.

Writing (:func:`atomic_write_bytes`): a temporary file
``.<name>.XXXXXXXX.tmp`` in the target's directory is written, fsync-ed, renamed
over the target with ``os.replace`` and the directory fsync-ed; on any failure
the temporary file is removed and the target is untouched.  Temporary files of
the same target left by killed earlier saves (same exact name pattern, older
than the current one) are removed first.

Exceptions: the readers raise the error class their caller passes (e.g.
``DataError``, ``CheckpointError``) with a one-line message naming the path;
:func:`check_outputs_vs_inputs` raises :class:`OutputIsInputError`; the writer
raises ``OSError`` (turn it into a message with :func:`describe_oserror`).
"""
from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Optional, Type, Union

from .errors import MicrogptError, OutputIsInputError  # noqa: F401 (re-exported)

__all__ = ["DEFAULT_MAX_CHECKPOINT_BYTES", "DEFAULT_MAX_DATA_BYTES", "MAX_CHECKPOINT_ENV",
           "MAX_DATA_ENV", "OutputIsInputError", "atomic_write_bytes", "check_outputs_vs_inputs",
           "describe_file_type", "describe_oserror", "max_bytes", "read_regular_file",
           "remove_stale_temp_files", "same_file", "temp_file_pattern"]

PathArg = Union[str, "os.PathLike[str]"]

DEFAULT_MAX_DATA_BYTES = 2 * 2**30          # 2 GiB
DEFAULT_MAX_CHECKPOINT_BYTES = 16 * 2**30   # 16 GiB
MAX_DATA_ENV = "MICROGPT_C_MAX_DATA_BYTES"
MAX_CHECKPOINT_ENV = "MICROGPT_C_MAX_CHECKPOINT_BYTES"

_READ_CHUNK = 2**30  # Linux reads at most ~2 GiB per call


# --------------------------------------------------------------------------- reading
def describe_file_type(mode: int) -> str:
    """``'a FIFO (named pipe)'``, ``'a character device'``, ... for a ``st_mode``."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n} bytes"


def max_bytes(env_var: str, default: int) -> int:
    """The size limit: ``$env_var`` (a positive number of bytes) if set and
    not empty, else ``default``.  A malformed value is a ValueError naming the
    variable."""
    text = os.environ.get(env_var, "").strip()
    if not text:
        return default
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{env_var}={text!r} is not a positive number of bytes")
    return value


def read_regular_file(path: PathArg, *, what: str, error: Type[Exception],
                      limit: int, env_var: Optional[str] = None,
                      not_found: Optional[Type[Exception]] = None,
                      hint: str = "") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` bytes.

    ``what`` names the file in messages (``"data file"``, ``"checkpoint"``);
    every failure raises ``error`` (``not_found`` for a missing file, default
    ``error``) with a one-line message naming the path; ``env_var`` is the
    variable that raises ``limit`` (named in the message); ``hint`` is added to
    messages about the file's type.
    """
    p = os.fspath(path)
    suffix = f"; {hint}" if hint else ""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise (not_found or error)(f"{what} not found: {p}") from None
    except OSError as exc:
        raise error(describe_oserror(exc, p, f"read the {what}")) from None
    _check_stat(st, p, what, error, limit, env_var, suffix)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise (not_found or error)(f"{what} not found: {p}") from None
    except OSError as exc:
        raise error(describe_oserror(exc, p, f"read the {what}")) from None
    try:
        st = os.fstat(fd)  # the file opened may not be the one stat-ed
        _check_stat(st, p, what, error, limit, env_var, suffix)
        parts = []
        total = 0
        size = st.st_size
        while True:
            # ask for what the file holds (+1 to see it end, or grow): os.read
            # allocates the whole request before it reads (a 1 GiB request for
            # a small file would fail under a memory limit)
            want = size - total + 1 if total <= size else 2**20
            try:
                chunk = os.read(fd, max(1, min(_READ_CHUNK, limit + 1 - total, want)))
            except OSError as exc:
                raise error(describe_oserror(exc, p, f"read the {what}")) from None
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew while being read
                raise error(_too_large(p, what, total, limit, env_var, grew=True))
    finally:
        os.close(fd)
    if len(parts) == 1:
        return parts[0]
    return b"".join(parts)


def _too_large(p: str, what: str, size: int, limit: int, env_var: Optional[str],
               grew: bool = False) -> str:
    how = "grew beyond" if grew else f"is {_gib(size)}, more than"
    fix = f"; set {env_var} (bytes) to raise the limit" if env_var else ""
    return f"{p} {how} the limit of {_gib(limit)} for a {what}{fix}"


def _check_stat(st: os.stat_result, p: str, what: str, error: Type[Exception], limit: int,
                env_var: Optional[str], suffix: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{p} is {describe_file_type(st.st_mode)}, not a regular file: "
                    f"cannot use it as a {what}{suffix}")
    if st.st_size > limit:
        raise error(_too_large(p, what, st.st_size, limit, env_var))


# --------------------------------------------------------------------------- same files
def _identity(path: PathArg):
    """(device, inode) of an existing file (through symlinks), else the
    resolved absolute path."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except (OSError, ValueError):
        return ("path", os.path.realpath(os.path.abspath(p)))
    return ("inode", st.st_dev, st.st_ino)


def same_file(a: PathArg, b: PathArg) -> bool:
    """True if ``a`` and ``b`` are the same file: same device and inode
    (through symlinks and hard links); a path that does not exist yet is
    compared by its resolved absolute path (symlinks in its directories
    followed)."""
    return _identity(a) == _identity(b)


def check_outputs_vs_inputs(outputs: Mapping[str, Optional[PathArg]],
                            inputs: Mapping[str, Optional[PathArg]]) -> None:
    """Raise :class:`OutputIsInputError` if an output path is the same file as
    an input path or as another output (``None`` values are skipped).  Keys
    name the options in the message, e.g.
    ``check_outputs_vs_inputs({"--metrics-out": m}, {"--data": d})`` raises
    ``"--metrics-out d.txt is the same file as --data d.txt; ..."``."""
    outs = [(k, v) for k, v in outputs.items() if v is not None]
    ins = [(k, v) for k, v in inputs.items() if v is not None]
    for i, (oname, opath) in enumerate(outs):
        for iname, ipath in ins + outs[:i]:
            if same_file(opath, ipath):
                role = "an input" if (iname, ipath) in ins else "another output"
                raise OutputIsInputError(
                    f"{oname} {os.fspath(opath)} is the same file as {iname} "
                    f"{os.fspath(ipath)}; writing it would destroy {role}: choose another "
                    f"path for {oname}")


# --------------------------------------------------------------------------- errors
_ERRNO_TEXT = {
    errno.ENOSPC: ("no space left on the device", "free some disk space or write to another "
                   "file system"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere"),
    errno.EACCES: ("permission denied", "check the permissions of the file and its directory"),
    errno.EPERM: ("operation not permitted", "check the permissions of the file and its "
                  "directory"),
    errno.EROFS: ("read-only file system", "write to a writable location"),
    errno.ENOENT: ("no such file or directory", "check the path (and that its directory "
                   "exists)"),
    errno.ENOTDIR: ("a component of the path is not a directory", "check the path"),
    errno.EISDIR: ("it is a directory", "give a file path"),
    errno.ENAMETOOLONG: ("the file name is too long", "use a shorter path"),
    errno.EFBIG: ("the file is too large for this file system", "write to another file "
                  "system"),
    errno.EIO: ("input/output error", "the disk or network file system may be failing; "
                "check it"),
    errno.EMFILE: ("too many open files", "raise the open-file limit (ulimit -n)"),
    errno.ENFILE: ("too many open files in the system", "close other programs' files"),
    errno.ELOOP: ("too many levels of symbolic links", "check the path's symlinks"),
    errno.ENXIO: ("no such device or address (a FIFO with no reader?)", "give a regular file"),
    errno.ETXTBSY: ("the file is busy", "retry, or write elsewhere"),
}


#: the errno values :func:`describe_oserror` has a reason and advice for
KNOWN_ERRNOS = frozenset(_ERRNO_TEXT)


def describe_oserror(exc: OSError, path: Optional[PathArg] = None, action: str = "access") -> str:
    """A one-line message for ``exc``: ``"cannot <action> <path>: <reason>; <what to
    do>"``, e.g. ``describe_oserror(e, "run/checkpoint.safetensors", "write the
    checkpoint")`` -> ``"cannot write the checkpoint run/checkpoint.safetensors: no
    space left on the device; free some disk space or write to another file
    system"``.  ``path`` defaults to the exception's ``filename``."""
    if path is None:
        path = exc.filename
    where = f" {os.fspath(path)}" if path is not None else ""
    known = _ERRNO_TEXT.get(exc.errno) if exc.errno is not None else None
    if known is not None:
        reason, fix = known
        return f"cannot {action}{where}: {reason}; {fix}"
    reason = " ".join(str(exc.strerror or exc).split()) or type(exc).__name__
    return f"cannot {action}{where}: {reason}"


# --------------------------------------------------------------------------- writing
def temp_file_pattern(target_name: str) -> "re.Pattern[str]":
    """The names of :func:`atomic_write_bytes`'s temporary files for a target
    named ``target_name``: ``.<name>.`` + tempfile's 8 random characters + ``.tmp``."""
    return re.compile(r"\." + re.escape(target_name) + r"\.[a-z0-9_]{8}\.tmp\Z")


def remove_stale_temp_files(path: PathArg, older_than_ns: int) -> list:
    """Remove the temporary files of target ``path`` (exact name pattern, regular
    files, not symlinks) last modified before ``older_than_ns``
    (``st_mtime_ns``), left by saves that were killed.  Returns the removed
    paths; errors are ignored (it is only a clean-up)."""
    path = Path(os.fspath(path))
    pattern = temp_file_pattern(path.name)
    removed = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if not pattern.match(name):
            continue
        candidate = path.parent / name
        try:
            st = os.lstat(candidate)
            if stat.S_ISREG(st.st_mode) and st.st_mtime_ns < older_than_ns:
                os.unlink(candidate)
                removed.append(candidate)
        except OSError:
            pass
    return removed


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view[:_READ_CHUNK])
        view = view[n:]


def atomic_write_bytes(path: PathArg, data, *, remove_stale: bool = True,
                       on_stale: Optional[Callable[[list], None]] = None) -> Path:
    """Write ``data`` (bytes-like) to ``path`` atomically: a temporary file in
    the same directory is written, fsync-ed, renamed over ``path`` and the
    directory fsync-ed.  On any failure, including KeyboardInterrupt, the
    temporary file is removed, ``path`` is untouched and the exception
    (``OSError`` for I/O errors) propagates.  With ``remove_stale``, temporary
    files of the same target older than this one are removed first (frees
    the space of killed saves); ``on_stale`` is called with their paths."""
    path = Path(os.fspath(path))
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if remove_stale:
            removed = remove_stale_temp_files(path, os.fstat(fd).st_mtime_ns)
            if removed and on_stale is not None:
                on_stale(removed)
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the usual 0666 & ~umask
            os.fchmod(fd, 0o666 & ~_umask())
        _write_all(fd, data)
        os.fsync(fd)
        fd_, fd = fd, -1
        os.close(fd_)
        os.replace(tmp_name, path)
    except BaseException:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path
