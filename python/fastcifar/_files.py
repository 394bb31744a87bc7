"""Atomic file writes: a checkpoint is either the old file or the complete new one, never half."""

import errno
import os
import re
import secrets
import stat
import time

# A temporary file whose writer is gone (killed) is removed by the next write to the same target;
# one whose writer still runs (as far as this host can tell) only once it is this old.
STALE_AFTER_S = 3600.0


def _temp_name(base: str) -> str:
    # Unique to this write: the pid says whose it is (for clean-up), the random part tells apart
    # two writes of one process (threads).
    return f".{base}.{os.getpid()}.{secrets.token_hex(6)}.tmp"


def _own_temps(d: str, base: str):
    """(name, writer pid) of the temporary files of target ``base`` in ``d``, and of no other
    target: ``p.pth``'s pattern does not match ``p.pth.best``'s temps."""
    pattern = re.compile(r"\." + re.escape(base) + r"\.(\d+)\.[0-9a-f]{12}\.tmp")
    for name in os.listdir(d):
        m = pattern.fullmatch(name)
        if m:
            yield name, int(m.group(1))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _remove_stale(d: str, base: str) -> None:
    now = time.time()
    for name, pid in _own_temps(d, base):
        p = os.path.join(d, name)
        try:
            if (pid != os.getpid() and not _alive(pid)) or now - os.stat(p).st_mtime > STALE_AFTER_S:
                os.remove(p)
        except OSError:
            pass  # already gone, or not ours to remove


def _create(path: str) -> None:
    # O_EXCL with mode 0o666: the kernel applies the umask, as for any file the user creates
    # (mkstemp's 0600 would not).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _named(e: BaseException, path: str, d: str) -> BaseException:
    """The error of a failed write, as an OSError naming ``path`` where it is one. torch.save
    reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``."""
    if isinstance(e, OSError):
        code = e.errno if e.errno is not None else errno.EIO
        return OSError(code, f"{e.strerror or e} (writing {path})", path)
    if isinstance(e, RuntimeError):
        try:
            st = os.statvfs(d)
            full = st.f_bavail * st.f_frsize < (1 << 20)
        except OSError:
            full = False
        if full:
            return OSError(errno.ENOSPC, f"No space left on device (writing {path}: {e})", path)
        return RuntimeError(f"{path}: writing failed: {e}")
    return e


def _check_folder(path: str, d: str) -> None:
    """A missing folder is refused, as ``torch.save`` and ``open`` refuse it (creating one from a
    mistyped path would hide the typo)."""
    if not os.path.isdir(d):
        raise FileNotFoundError(
            errno.ENOENT,
            f"{path}: the folder {d} does not exist (torch.save does not create it either); "
            f"create it first: os.makedirs({d!r}, exist_ok=True)",
            path,
        )


def atomic_write(path: str, write) -> None:
    """Calls ``write(tmp_path)`` for a temporary file beside ``path``, fsyncs it, then renames it
    over ``path``. If anything fails (or the process dies), ``path`` keeps its previous content.
    Concurrent writers each have their own temporary file: to different targets they never
    interfere; to the same target each rename is whole and the last one wins."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _check_folder(path, d)
    try:
        _remove_stale(d, base)
        tmp = os.path.join(d, _temp_name(base))
        _create(tmp)
    except OSError as e:
        raise _named(e, path, d) from e
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        err = _named(e, path, d)
        if err is e:
            raise
        raise err from e


def check_writable(path, need_bytes: int = 0) -> None:
    """Fails now, naming ``path``, if a file cannot be written there: the folder cannot be made or
    written, or has less than ``need_bytes`` free (a lower bound of the file's size)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    if not base:
        raise IsADirectoryError(errno.EISDIR, f"checkpoint: {path!r} names a folder, not a file", path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f"checkpoint: {path} is a folder", path)
    _check_folder(path, d)
    try:
        _remove_stale(d, base)
        probe = os.path.join(d, _temp_name(base))
        _create(probe)
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.remove(probe)
        st = os.statvfs(d)
    except OSError as e:
        raise _named(e, path, d) from e
    free = st.f_bavail * st.f_frsize
    if free < need_bytes:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: {path} needs at least {need_bytes / 1e6:.1f} MB, {free / 1e6:.1f} MB free",
            path,
        )


def check_regular(path) -> None:
    """Refuses a path that exists but is not a regular file, before anything opens it: opening a
    FIFO blocks until a writer comes (forever). The Python twin of the core's ``open_regular``,
    with its message."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing: the caller's own open says so
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, f"{os.fspath(path)}: a folder: only regular files are read", path)
    if not stat.S_ISREG(mode):
        raise ValueError(
            f"{os.fspath(path)}: not a regular file (a FIFO, socket or device?): only regular files are read"
        )
