"""Where a dataset lives: a local directory, or a prefix in object storage (``s3://bucket/prefix``).

The shard commit protocol (:mod:`distillery.storage.shards`) needs only a handful of operations,
and this module gives each a local and an object-store implementation, so the protocol itself is
written once:

- *publish a new shard* — local: temp file + fsync, then ``os.link`` to ``part-NNNNN.parquet``
  (a link never replaces an existing file). Object storage: the Parquet file is built in memory
  and sent in one PUT to ``part-NNNNN-<random>.parquet``: the object appears whole or not at
  all, and the random suffix means no two writers can pick the same name.
- *replace ``_manifest.json``* — local: temp file + fsync + rename. Object storage: one PUT,
  atomic per object.
- *serialise manifest updates* — local: an ``fcntl`` lock file, across processes. Object
  storage: a lock within this process only.

So object storage keeps every promise of the local layout — readers see only whole shards and
whole manifests, the catalog reads only shards a manifest lists, crash leftovers are adopted or
deleted by ``reconcile`` — with one limit: S3 has no lock, so **one writer process per run**,
which :mod:`distillery.storage.run_lock` enforces with a local lock and a lease object
(several runs may write the same output at once: each run has its own manifests).

The endpoint and credentials of S3 come from the standard AWS environment (``AWS_ENDPOINT_URL``
or ``AWS_ENDPOINT_URL_S3`` for an S3-compatible server, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), read explicitly here because pyarrow's
``S3FileSystem()`` ignores ``AWS_ENDPOINT_URL``. Reads and writes go through pyarrow's own
``S3FileSystem``: DuckDB's httpfs extension is not available offline.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import os
import re
import secrets
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal, TypeVar
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from distillery.errors import UserInputError
from distillery.storage.failpoints import failpoint

# A committed shard: ``part-00012.parquet`` locally, ``part-00012-9f3ab27c41d0.parquet`` on
# object storage. The number orders shards; only the random suffix makes remote names unique.
# A rewrite of committed rows (compaction, dedup) is named ``compacted-…`` the same way.
PART = re.compile(r"^part-(\d+)(?:-[0-9a-f]+)?\.parquet$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
SUPPORTED_SCHEMES = ("s3",)

Writer = Callable[[BinaryIO], None]
# A Path in, a Path out: the local API (and every caller written against it) stays as it was.
Where = TypeVar("Where", Path, "Location")


def is_uri(text: str) -> bool:
    """Whether an output or ``--data`` value is a URI (``s3://…``) rather than a local path."""
    return _SCHEME.match(text) is not None


def normalise_uri(text: str) -> str:
    """``s3://bucket/prefix`` without a trailing slash; ValueError names what is wrong."""
    match = _SCHEME.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a URI")
    scheme = match.group(1).lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(
            f"unsupported URI scheme {scheme!r}: use a local directory or s3://bucket/prefix"
        )
    parts = urlsplit(text)
    bucket = parts.netloc
    if not bucket or parts.query or parts.fragment:
        raise ValueError(f"{text!r}: expected s3://bucket/prefix")
    prefix = "/".join(segment for segment in parts.path.split("/") if segment)
    return f"{scheme}://{bucket}/{prefix}" if prefix else f"{scheme}://{bucket}"


def resolve_output(text: str) -> Path | str:
    """A ``--output``/``--data`` value: a normalised URI, or an absolute local path."""
    return normalise_uri(text) if is_uri(text) else Path(text).resolve()


def as_location(output: Path | str | Location) -> Location:
    """The :class:`Location` of a dataset given as a path, a path string or a URI."""
    if isinstance(output, Location):
        return output
    if isinstance(output, Path) or not is_uri(output):
        return LocalLocation(Path(output))
    try:
        uri = normalise_uri(output)
    except ValueError as exc:
        raise UserInputError(f"{output}: {exc}") from None
    return ObjectStoreLocation(_s3_filesystem(*_s3_settings()), uri.removeprefix("s3://"), "s3")


def like(template: Where, location: Location) -> Where:
    """``location`` in the form ``template`` came in: a Path for a Path, else the Location."""
    if isinstance(template, Path):
        assert location.local_path is not None, "a local path cannot lead to object storage"
        return location.local_path
    return location


def next_number(names: list[str]) -> int:
    """One past the highest shard number among ``names`` (0 when there is none)."""
    return max((int(m.group(1)) for name in names if (m := PART.match(name))), default=-1) + 1


class Location(ABC):
    """A directory or file of a dataset, local or in object storage.

    ``filesystem`` and ``fs_path`` are what pyarrow readers take; ``local_path`` is set only
    for local locations (code that needs a real path, like DuckDB's ``read_parquet``, uses it).
    """

    uri: str
    fs_path: str
    local_path: Path | None

    @property
    @abstractmethod
    def filesystem(self) -> pafs.FileSystem: ...

    @property
    def name(self) -> str:
        return self.fs_path.rstrip("/").rsplit("/", 1)[-1]

    @abstractmethod
    def child(self, *names: str) -> Location:
        """A location inside this directory."""

    @abstractmethod
    def is_dir(self) -> bool: ...

    @abstractmethod
    def names(self) -> list[str]:
        """Names of the files and directories directly inside (empty if there is none)."""

    @abstractmethod
    def subdirs(self) -> list[str]:
        """Names of the directories directly inside."""

    @abstractmethod
    def ensure_dir(self) -> None:
        """Create this directory if the storage has directories at all."""

    @abstractmethod
    def size(self) -> int:
        """Bytes of this file."""

    @abstractmethod
    def read_bytes(self) -> bytes | None:
        """Content of this file, or None if it does not exist."""

    @abstractmethod
    def replace(self, content: bytes) -> None:
        """Replace this file atomically: a reader sees the old content or the new, never a mix."""

    @abstractmethod
    def delete(self) -> None:
        """Delete this file if it exists."""

    @abstractmethod
    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Serialise read-modify-write of this directory's manifest."""

    @abstractmethod
    def publish(self, write: Writer, part: int, stem: str = "part") -> tuple[Location, int]:
        """Write a new shard with ``write`` and commit it under a fresh ``<stem>-NNNNN`` name in
        this directory, never replacing an existing one. ``part`` is the preferred number; the
        next free one is used if it is taken. Returns the shard and its size in bytes.

        ``stem`` is ``part`` for new rows and ``compacted`` for a rewrite of committed rows
        (compaction, dedup), which :func:`~distillery.storage.shards.reconcile` must never
        adopt outside a manifest: its rows are still in the shards it was to replace."""

    def unreachable(self) -> str | None:
        """Why this dataset's storage cannot be used right now, or None."""
        return None

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash((type(self), self.uri))


class LocalLocation(Location):
    """A local directory: the original protocol (temp + fsync + hard link, fcntl lock)."""

    def __init__(self, path: Path) -> None:
        self.local_path = path
        self.uri = str(path)
        self.fs_path = str(path.absolute())

    @property
    def path(self) -> Path:
        assert self.local_path is not None
        return self.local_path

    @property
    def filesystem(self) -> pafs.FileSystem:
        return pafs.LocalFileSystem()

    def child(self, *names: str) -> LocalLocation:
        return LocalLocation(self.path.joinpath(*names))

    def is_dir(self) -> bool:
        return self.path.is_dir()

    def names(self) -> list[str]:
        return [p.name for p in self.path.iterdir()] if self.path.is_dir() else []

    def subdirs(self) -> list[str]:
        return [p.name for p in self.path.iterdir() if p.is_dir()] if self.path.is_dir() else []

    def ensure_dir(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def size(self) -> int:
        return self.path.stat().st_size

    def read_bytes(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def replace(self, content: bytes) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        with tmp.open("wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        failpoint("location:replace-synced")
        tmp.replace(self.path)
        fsync_dir(self.path.parent)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with (self.path / ".manifest.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def publish(self, write: Writer, part: int, stem: str = "part") -> tuple[Location, int]:
        # 1. a complete, fsynced file under a hidden temporary name;
        # 2. hard-linked to its final name: unlike a rename, a link never replaces an
        #    existing shard, so two writers can not clobber each other (the loser takes the
        #    next number).
        tmp = self.path / f".part-{uuid.uuid4().hex}.parquet.tmp"
        try:
            with tmp.open("wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            while True:
                final = self.path / f"{stem}-{part:05d}.parquet"
                try:
                    os.link(tmp, final)
                    break
                except FileExistsError:
                    part = max(part + 1, next_number(self.names()))
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.path)
        return LocalLocation(final), final.stat().st_size


def fsync_dir(directory: Path) -> None:
    """Make the names in ``directory`` durable (a new or renamed file survives a power cut)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Object storage has no lock: manifest updates are serialised within this process only.
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class ObjectStoreLocation(Location):
    """A prefix in object storage, through a pyarrow filesystem (``bucket/prefix/...``)."""

    def __init__(self, filesystem: pafs.FileSystem, fs_path: str, scheme: str) -> None:
        self._filesystem = filesystem
        self.fs_path = fs_path.strip("/")
        self.scheme = scheme
        self.uri = f"{scheme}://{self.fs_path}"
        self.local_path = None

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self._filesystem

    @property
    def bucket(self) -> str:
        return self.fs_path.split("/", 1)[0]

    def child(self, *names: str) -> ObjectStoreLocation:
        return ObjectStoreLocation(self._filesystem, "/".join((self.fs_path, *names)), self.scheme)

    def _info(self) -> pafs.FileInfo:
        return self._filesystem.get_file_info(self.fs_path)

    def _entries(self) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.fs_path, allow_not_found=True, recursive=False)
        return [
            info
            for info in self._filesystem.get_file_info(selector)
            if info.path.rstrip("/") != self.fs_path
        ]

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def names(self) -> list[str]:
        return [info.base_name for info in self._entries()]

    def subdirs(self) -> list[str]:
        return [info.base_name for info in self._entries() if info.type == pafs.FileType.Directory]

    def ensure_dir(self) -> None:
        """Nothing to do: a prefix exists as soon as an object is written under it."""

    def size(self) -> int:
        return int(self._info().size or 0)

    def read_bytes(self) -> bytes | None:
        try:
            with self._filesystem.open_input_stream(self.fs_path) as stream:
                return bytes(stream.read())
        except FileNotFoundError:
            return None

    def replace(self, content: bytes) -> None:
        # One PUT: the object is replaced whole, or not at all.
        self._put(content)

    def _put(self, content: bytes) -> None:
        # The whole object is handed over in one write, so there is nothing partial for
        # close() to complete: a PUT (or a multipart upload whose parts all arrived) makes
        # it appear whole; a process killed before close() leaves nothing visible.
        stream = self._filesystem.open_output_stream(self.fs_path)
        stream.write(content)
        stream.close()

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._filesystem.delete_file(self.fs_path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with _LOCKS_GUARD:
            lock = _LOCKS.setdefault(self.uri, threading.Lock())
        with lock:
            yield

    def publish(self, write: Writer, part: int, stem: str = "part") -> tuple[Location, int]:
        buffer = io.BytesIO()
        write(buffer)
        content = buffer.getvalue()
        names = self.names()
        if any((m := PART.match(name)) and int(m.group(1)) == part for name in names):
            part = max(part + 1, next_number(names))
        final = self.child(f"{stem}-{part:05d}-{secrets.token_hex(6)}.parquet")
        final._put(content)
        return final, len(content)

    def unreachable(self) -> str | None:
        try:
            found = self._filesystem.get_file_info(self.bucket).type != pafs.FileType.NotFound
        except OSError as exc:
            return f"cannot reach the bucket ({_first_line(exc)})"
        return None if found else f"bucket {self.bucket!r} does not exist (or is not visible)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _s3_settings() -> tuple[str | None, str | None]:
    """(endpoint, region) from the standard AWS environment variables."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return endpoint or None, region or None


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    """One S3 client per endpoint and region (creating one sets up the AWS SDK)."""
    scheme: Literal["http", "https"] = "https"
    override = None
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UserInputError(f"AWS_ENDPOINT_URL {endpoint!r}: expected http(s)://host[:port]")
        scheme = "http" if parts.scheme == "http" else "https"
        override = parts.netloc + parts.path.rstrip("/")
    return pafs.S3FileSystem(region=region, endpoint_override=override, scheme=scheme)


def spool_key(location: Location) -> str:
    """A stable, file-name-safe key of a dataset's URI (names its local spool directory)."""
    return hashlib.blake2b(location.uri.encode(), digest_size=8).hexdigest()
