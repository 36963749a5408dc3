"""Durable, verifiable files: atomic writes with a SHA-256 sidecar in ``sha256sum`` format.

``write_verified(path, write)`` leaves either the old pair (file, ``<file>.sha256``) or the new
one, never half a file. Its steps, and what a crash after each one leaves:

1. ``write(<file>.tmp<pid>)``, fsync, hash it, write and fsync ``<file>.sha256.tmp<pid>``;
   a crash here leaves the old pair intact plus temporaries, removed by the next write.
2. rename the file over ``<file>``, fsync the folder; a crash here leaves the new file beside
   the old sidecar, and the new sidecar still in ``<file>.sha256.tmp<pid>``. ``verify_file``
   accepts the file when such a pending sidecar matches it, and the next write promotes it.
3. rename the sidecar, fsync the folder: the new pair is in place.

The sidecar is renamed last so that a sidecar never describes a file that is not there yet.
"""
import hashlib
import logging
import os
import re

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256"
CHUNK = 1 << 20
_DIGEST = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class IntegrityError(ValueError):
    """A file's content differs from the SHA-256 recorded beside it, or the record is unreadable."""


def sidecar_path(path):
    """``<path>.sha256``: the SHA-256 of ``path`` in ``sha256sum`` format."""
    return path + SIDECAR_SUFFIX


def temporary_path(path):
    """``<path>.tmp<pid>``: where this process writes ``path`` before renaming it."""
    return f"{path}.tmp{os.getpid()}"


def sha256_file(path):
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path):
    """Flush a file, or a folder's entries (renames), to the disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_sidecar(sidecar):
    """The digest of the ``sha256sum`` line in ``sidecar``, or None when absent or malformed."""
    try:
        with open(sidecar, "r", encoding="utf-8", errors="replace") as f:
            match = _DIGEST.match(f.readline().rstrip("\n"))
    except FileNotFoundError:
        return None
    return match.group(1) if match else None


def read_sidecar(sidecar):
    """The digest recorded in a ``sha256sum``-format file, or None when the file is absent."""
    digest = _parse_sidecar(sidecar)
    if digest is None and os.path.exists(sidecar):
        raise IntegrityError(f"{sidecar} is not a `sha256sum` line (<64 hex digits>  <file name>); "
                             f"delete it to load {sidecar[:-len(SIDECAR_SUFFIX)]} unverified")
    return digest


def _write_sidecar(sidecar, digest, name):
    with open(sidecar, "w", encoding="utf-8") as f:
        f.write(f"{digest}  {name}\n")
        f.flush()
        os.fsync(f.fileno())


def _pid_is_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temporaries(path):
    """``(checkpoint temporaries, sidecar temporaries)`` of ``path`` left by earlier writes:
    ``<path>.tmp<pid>`` and ``<path>.sha256.tmp<pid>`` of dead processes or of this one."""
    folder, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(name) + r"(\.sha256)?\.tmp(\d+)$")
    files, sidecars = [], []
    for entry in sorted(os.listdir(folder)):
        match = pattern.match(entry)
        if match and (int(match.group(2)) == os.getpid() or not _pid_is_alive(int(match.group(2)))):
            (sidecars if match.group(1) else files).append(os.path.join(folder, entry))
    return files, sidecars


def _pending_sidecars(path):
    """Sidecar temporaries of ``path`` of any process, whose renames may not have happened."""
    folder, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(name + SIDECAR_SUFFIX) + r"\.tmp\d+$")
    return [os.path.join(folder, entry) for entry in sorted(os.listdir(folder)) if pattern.match(entry)]


def settle_interrupted_writes(path):
    """Finish or discard what crashed writes of ``path`` left: a stale sidecar temporary that
    matches ``path`` (a crash between the two renames) becomes its sidecar; every other stale
    temporary is removed."""
    files, sidecars = stale_temporaries(path)
    actual = sha256_file(path) if sidecars and os.path.exists(path) else None
    for sidecar in sidecars:
        if actual is not None and _parse_sidecar(sidecar) == actual:
            os.replace(sidecar, sidecar_path(path))
            fsync_path(os.path.dirname(os.path.abspath(path)))
            logger.info("completed the interrupted write of %s: %s is its sidecar now", path, sidecar)
        else:
            os.remove(sidecar)
    for leftover in files:
        logger.info("removing %s, left by an interrupted write", leftover)
        os.remove(leftover)


def write_verified(path, write):
    """Write ``path`` atomically and durably with its SHA-256 sidecar (see the module docstring).

    Args:
        path: the final file.
        write: ``write(temporary_path)`` creates the content in the temporary file.
    Returns:
        the hex SHA-256 of the new file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    settle_interrupted_writes(path)
    tmp, tmp_sidecar = temporary_path(path), temporary_path(sidecar_path(path))
    try:
        write(tmp)
        fsync_path(tmp)
        digest = sha256_file(tmp)
        _write_sidecar(tmp_sidecar, digest, os.path.basename(path))
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, tmp_sidecar):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise
    fsync_path(folder)
    # From here on the pending sidecar is kept even on an error: it is what vouches for the file.
    os.replace(tmp_sidecar, sidecar_path(path))
    fsync_path(folder)
    return digest


def verify_file(path):
    """Check ``path`` against its sidecar.

    Returns:
        True when verified; False when there is no sidecar (e.g. a released checkpoint), logged
        at info.
    Raises:
        IntegrityError naming the file when its SHA-256 differs from the recorded one (and from
        any pending sidecar of an interrupted write).
    """
    recorded = read_sidecar(sidecar_path(path))
    pending = _pending_sidecars(path)
    if recorded is None and not pending:
        logger.info("%s has no %s sidecar; loading it unverified", path, SIDECAR_SUFFIX)
        return False
    actual = sha256_file(path)
    if actual == recorded:
        return True
    for sidecar in pending:
        if _parse_sidecar(sidecar) == actual:
            logger.info("%s matches %s of an interrupted write; verified", path, sidecar)
            return True
    if recorded is None:
        logger.info("%s has no %s sidecar; loading it unverified", path, SIDECAR_SUFFIX)
        return False
    raise IntegrityError(
        f"{path} is corrupt: its SHA-256 is {actual}, but {sidecar_path(path)} recorded {recorded} "
        f"when it was written (a disk, copy or transfer error changed it); restore it from a copy, "
        f"or delete {sidecar_path(path)} to load it unverified")
