"""Atomic file writes: a checkpoint is either the old file or the complete new one, never half."""
import os
import tempfile


def atomic_write(path: str, write) -> None:
    """Calls ``write(tmp_path)`` for a temporary file beside ``path``, fsyncs it, then renames it
    over ``path``. If anything fails (or the process dies), ``path`` keeps its previous content."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    # Temporary files of a writer that was killed mid-write (SIGKILL leaves no chance to clean up).
    # One writer per path is assumed, as for any checkpoint file.
    prefix = "." + os.path.basename(path) + "."
    for name in os.listdir(d):
        if name.startswith(prefix) and name.endswith(".tmp"):
            try:
                os.remove(os.path.join(d, name))
            except OSError:
                pass
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    os.close(fd)
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
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
