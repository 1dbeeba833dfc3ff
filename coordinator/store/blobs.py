"""Content-addressed blobs on disk: ``<root>/sha256/ab/abcdef...``.

Why content addressing: a model version is named by the SHA-256 of its bytes
in the database, the lineage and the audit log, so the file name *is* the
claim and every read can check it. A bit flip or an edited file surfaces as
:class:`BlobCorrupted` instead of a silently different model.

Writes are atomic (temporary file in the same directory, ``fsync``,
``os.replace``): a crash leaves either no blob or the whole blob, never a
torn one under its final name. Writing a blob that already exists is a no-op
(after checking the existing file), so identical content is stored once.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from fedward.coordinator.errors import CoordinatorError

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobError(CoordinatorError):
    """Base class of blob store errors."""


class BlobNotFound(BlobError, KeyError):
    pass


class BlobCorrupted(BlobError):
    """A blob's bytes no longer hash to its name."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self._fsync = fsync
        # Models and buffered updates are derived from health data: owner-only.
        (self.root / "sha256").mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)

    def path_for(self, digest: str) -> Path:
        # The digest becomes a path: refuse anything but 64 lower-case hex digits.
        if not isinstance(digest, str) or not _SHA_RE.fullmatch(digest):
            raise BlobError(f"not a sha256 hex digest: {digest!r}")
        return self.root / "sha256" / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store ``data``; return its SHA-256 hex digest."""
        digest = sha256_of(data)
        path = self.path_for(digest)
        if path.exists():
            try:
                self.get(digest)
                return digest
            except BlobCorrupted:
                pass  # rewrite a damaged copy with the good bytes
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if self._fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self._fsync:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes named ``digest``; raise if missing or not matching."""
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        actual = sha256_of(data)
        if actual != digest:
            raise BlobCorrupted(f"blob {digest} hashes to {actual}")
        return data

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def delete(self, digest: str) -> None:
        self.path_for(digest).unlink(missing_ok=True)
