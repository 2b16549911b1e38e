"""The ``folder`` kind (SPEC §9): an instance that is a folder of scans on disk.

The on-disk format (layout, ``scan.json``, ID claims) is described and implemented in
``daemon.instances.folder_format``; this module is the instance on top of it.

Finding things: scans are never rewritten, so each instance keeps a small in-memory
catalog (file ID → scan, and marker value → scan for each marker field asked about)
fed by every ``scan.json`` it reads. On a miss it reads only the scan folders it has
not seen yet (one directory listing when nothing is new), so scans created by another
process are found without re-reading the whole folder.

Created scans: ``create_scan`` moves the uploads into the new scan and writes it with
status ``done``, ``has_report`` false and no reports, unless the payload carries
``reports`` (a list) or one ``details`` mapping (then ``has_report`` is true). An
upload belongs to one scan: it is consumed by the create. A crash in the middle leaves
a scan folder without ``scan.json``: invisible, and safe to delete while no daemon runs.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from loguru import logger

from daemon.config import FolderInstanceConfig
from daemon.errors import FatalError, PermanentError, TransientError
from daemon.fsutil import atomic_writer, fsync_dir
from daemon.instances.base import FetchedFile, FileRef, Scan, Selection
from daemon.instances.folder_format import (
    ID_NAME,
    SCAN_JSON,
    STATE_DIR,
    Upload,
    age_key,
    claim_file_id,
    claim_scan_id,
    claimed_file_ids,
    encode,
    extension,
    matches,
    now,
    parse_payload,
    read_claim,
    scan_from_json,
    scan_to_json,
    stored_file,
    stored_file_ids,
)

CHUNK = 1024 * 1024


@dataclass
class _Catalog:
    """What this instance has learnt from ``scan.json`` files; guarded by its lock."""

    seen: set[int] = field(default_factory=set)
    files: dict[int, tuple[int, str | None]] = field(default_factory=dict)
    markers: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, scan: Scan) -> None:
        self.seen.add(scan.id)
        for ref in scan.files:
            self.files[ref.file_id] = (scan.id, ref.filename)
        for name, index in self.markers.items():
            value = scan.provided_values.get(name)
            if isinstance(value, str):
                index.setdefault(value, scan.id)


class FolderInstance:
    """An instance that is a folder (see the module docstring). Thread-safe."""

    kind = "folder"

    def __init__(self, name: str, root: Path, max_connections: int = 4) -> None:
        self.name = name
        self.root = Path(root)
        self.max_connections = max_connections
        self._scans = self.root / "scans"
        self._claims = self.root / STATE_DIR / "file-ids"
        self._uploads = self.root / STATE_DIR / "uploads"
        self._lock = threading.Lock()  # the catalog
        self._refresh_lock = threading.Lock()  # one catalog refresh at a time
        self._alloc_lock = threading.Lock()  # the next-ID hints
        self._catalog = _Catalog()
        self._next_scan_id: int | None = None
        self._next_file_id: int | None = None

    @classmethod
    def from_config(cls, name: str, cfg: FolderInstanceConfig, base_dir: Path) -> FolderInstance:
        """The instance ``name`` of ``cfg``; a relative path is taken from ``base_dir``."""
        root = cfg.path if cfg.path.is_absolute() else base_dir / cfg.path
        return cls(name, root, max_connections=cfg.max_connections)

    def __repr__(self) -> str:
        return f"FolderInstance({self.name!r}, {str(self.root)!r})"

    # ---- reading -------------------------------------------------------------------

    def get_scans(self, scan_ids: Sequence[int]) -> list[Scan]:
        """The scans that exist, in the order asked. A corrupt ``scan.json`` raises
        ``PermanentError`` naming the scan and the file."""
        found = [scan for scan in map(self._read_scan, scan_ids) if scan is not None]
        self._remember(found)
        return found

    def select_scans(self, selection: Selection) -> list[int]:
        """IDs matching ``selection``, oldest first (captured_at, then ID; no date last).
        Reads every scan; a corrupt one is logged and left out rather than failing the
        whole selection (``get_scans`` on it reports it)."""
        chosen: list[tuple[tuple[int, float, int], int]] = []
        for scan in self._all_scans():
            if matches(scan, selection):
                chosen.append((age_key(scan), scan.id))
        ids = [scan_id for _, scan_id in sorted(chosen)]
        return ids if selection.limit is None else ids[: max(selection.limit, 0)]

    def fetch_file(self, ref: FileRef, dest: BinaryIO) -> FetchedFile:
        """Stream the file into ``dest`` in 1 MiB chunks. Unknown file: PermanentError."""
        path, filename = self._locate(ref.file_id)
        size = 0
        with self._io(f"file {ref.file_id}"), path.open("rb") as src:
            while chunk := src.read(CHUNK):
                dest.write(chunk)
                size += len(chunk)
        return FetchedFile(original_filename=filename or ref.filename, size=size)

    def find_scan_by_marker(self, field_name: str, value: str) -> int | None:
        """A scan whose provided_values[field_name] == value, also one made by another
        process since this instance last looked."""
        hit = self._marker_hit(field_name, value)
        if hit is None:
            self._refresh()
            hit = self._marker_hit(field_name, value)
        return hit

    def find_scan_by_files(self, file_ids: Sequence[int]) -> int | None:
        """The lowest scan holding any of the upload IDs ``file_ids`` (an upload becomes
        the file of the scan it was created with), also one made by another process."""
        hit = self._files_hit(file_ids)
        if hit is None:
            self._refresh()
            hit = self._files_hit(file_ids)
        return hit

    # ---- writing -------------------------------------------------------------------

    def ensure_layout(self) -> None:
        """Create the root and its folders (writes call this; so may a setup step)."""
        with self._io("create the folder layout"):
            for folder in (self._scans, self._claims, self._uploads):
                folder.mkdir(parents=True, exist_ok=True)

    def upload_file(self, path: Path, filename: str) -> int:
        """Copy ``path`` into the uploads (temp + rename); returns its new file ID."""
        self.ensure_layout()
        filename = filename.encode("utf-8", "replace").decode()  # lone surrogates: "?"
        ext = extension(filename)
        file_id = self._claim_file_id(filename, ext)
        with self._io(f"upload {filename!r}"), Path(path).open("rb") as src, \
                atomic_writer(self._uploads / f"{file_id}.{ext}", "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
        return file_id

    def create_scan(self, payload: Mapping[str, Any], *, scan_id: int | None = None) -> int:
        """Create a scan from ``payload`` ({store, files, captured_at, ...}; optional
        ``reports``, or one report as ``details``). ``scan_id`` asks for a given ID
        (seeding, imports): PermanentError
        if it is taken. An invalid payload or unknown upload: PermanentError."""
        request = parse_payload(payload)
        uploads = [self._staged_upload(file_id) for file_id in request.file_ids]
        self.ensure_layout()
        new_id = self._claim_scan_id(scan_id)
        scan = Scan(
            id=new_id, store_id=request.store_id, status="done",
            has_report=bool(request.reports), captured_at=request.captured_at,
            created_at=now(), provided_values=request.provided,
            files=tuple(FileRef(u.file_id, "image", u.filename) for u in uploads),
            reports=request.reports,
        )
        with self._io(f"create scan {new_id}"):
            self._commit(scan, uploads)
        self._remember([scan])
        return new_id

    def close(self) -> None:
        """Nothing to release: files are opened per call."""

    # ---- scans on disk -------------------------------------------------------------

    def _scan_dir(self, scan_id: int) -> Path:
        return self._scans / str(int(scan_id))

    def _read_scan(self, scan_id: int) -> Scan | None:
        path = self._scan_dir(scan_id) / SCAN_JSON
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None  # no such scan, or one still being created
        except OSError as exc:
            raise self._classify(exc, f"scan {scan_id}: cannot read {path}") from exc
        try:
            return scan_from_json(json.loads(raw), scan_id)
        except (ValueError, TypeError) as exc:  # JSON and UTF-8 errors are ValueErrors
            raise PermanentError(
                f"{self.name}: scan {scan_id}: corrupt {path}: {exc}") from exc

    def _scan_ids_on_disk(self) -> list[int]:
        try:
            names = os.listdir(self._scans)
        except FileNotFoundError:
            return []  # nothing written yet
        except OSError as exc:
            raise self._classify(exc, f"cannot list {self._scans}") from exc
        return [int(name) for name in names if ID_NAME.fullmatch(name)]

    def _read_quietly(self, scan_id: int) -> Scan | None:
        """For whole-folder reads: a corrupt scan is logged, not fatal to the rest."""
        try:
            return self._read_scan(scan_id)
        except PermanentError as exc:
            logger.warning("{}", exc)
            return None

    def _all_scans(self) -> Iterator[Scan]:
        for scan_id in self._scan_ids_on_disk():
            scan = self._read_quietly(scan_id)
            if scan is not None:
                self._remember([scan])
                yield scan

    # ---- catalog -------------------------------------------------------------------

    def _remember(self, scans: Iterable[Scan]) -> None:
        with self._lock:
            for scan in scans:
                self._catalog.add(scan)

    def _refresh(self) -> None:
        """Read the scan folders not seen yet (new, or written by another process)."""
        with self._refresh_lock:
            with self._lock:
                seen = set(self._catalog.seen)
            for scan_id in self._scan_ids_on_disk():
                if scan_id not in seen and (scan := self._read_quietly(scan_id)):
                    self._remember([scan])

    def _marker_hit(self, field_name: str, value: str) -> int | None:
        with self._lock:
            index = self._catalog.markers.get(field_name)
            if index is None:
                # A field not indexed before: forget what was seen so the next refresh
                # reads every scan once more and indexes this field too.
                self._catalog.markers[field_name] = {}
                self._catalog.seen.clear()
                return None
            hit = index.get(value)
        if hit is not None and not (self._scan_dir(hit) / SCAN_JSON).is_file():
            with self._lock:  # removed by hand since: forget it
                index.pop(value, None)
            return None
        return hit

    def _files_hit(self, file_ids: Sequence[int]) -> int | None:
        with self._lock:
            hits = [self._catalog.files[f][0] for f in file_ids if f in self._catalog.files]
        return min((h for h in hits if (self._scan_dir(h) / SCAN_JSON).is_file()),
                   default=None)

    def _locate(self, file_id: int) -> tuple[Path, str | None]:
        for attempt in range(2):
            if attempt:
                self._refresh()
            with self._lock:
                hit = self._catalog.files.get(file_id)
            if hit is not None and (path := self._stored_file(hit[0], file_id)):
                return path, hit[1]
        raise PermanentError(f"{self.name}: file {file_id} not found")

    def _stored_file(self, scan_id: int, file_id: int) -> Path | None:
        folder = self._scan_dir(scan_id) / "files"
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._classify(exc, f"cannot list {folder}") from exc
        match = stored_file(names, file_id)
        return folder / match if match else None

    # ---- IDs -----------------------------------------------------------------------

    def _claim_scan_id(self, wanted: int | None) -> int:
        if wanted is not None:
            if wanted < 1:
                raise PermanentError(f"{self.name}: scan ID must be positive, not {wanted}")
            with self._io(f"create scan {wanted}"):
                try:
                    self._scan_dir(wanted).mkdir()
                except FileExistsError:
                    raise PermanentError(f"{self.name}: scan {wanted} already exists") from None
            with self._alloc_lock:
                if self._next_scan_id is not None:
                    self._next_scan_id = max(self._next_scan_id, wanted + 1)
            return wanted
        with self._alloc_lock, self._io("allocate a scan ID"):
            first = self._next_scan_id or max(self._scan_ids_on_disk(), default=0) + 1
            candidate = claim_scan_id(self._scans, first)
            self._next_scan_id = candidate + 1
            return candidate

    def _claim_file_id(self, filename: str, ext: str) -> int:
        with self._alloc_lock, self._io("allocate a file ID"):
            first = self._next_file_id or self._highest_file_id() + 1
            candidate = claim_file_id(self._claims, first, filename, ext)
            self._next_file_id = candidate + 1
            return candidate

    def _highest_file_id(self) -> int:
        """The highest file ID in use: claims, and files of hand-made scans."""
        ids = claimed_file_ids(self._claims)
        for scan_id in self._scan_ids_on_disk():
            with suppress(FileNotFoundError, NotADirectoryError):
                ids += stored_file_ids(self._scan_dir(scan_id) / "files")
        return max(ids, default=0)

    def _staged_upload(self, file_id: int) -> Upload:
        claim = self._claims / str(file_id)
        try:
            upload = read_claim(self._claims, file_id)
        except FileNotFoundError:
            raise PermanentError(f"{self.name}: unknown upload {file_id}") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise PermanentError(f"{self.name}: upload {file_id}: corrupt {claim}") from exc
        if not (self._uploads / upload.name).is_file() and not self._reclaim(upload):
            raise PermanentError(f"{self.name}: upload {file_id} is already part of a scan")
        return upload

    def _reclaim(self, upload: Upload) -> bool:
        """An upload inside a scan folder without scan.json belongs to a create that a
        crash cut off: it is free again, so move it back (a resumed create then succeeds
        instead of failing for good). One daemon per root makes this safe."""
        for stray in self._scans.glob(f"*/files/{upload.name}"):
            if not (stray.parent.parent / SCAN_JSON).exists():
                with suppress(FileNotFoundError):
                    os.rename(stray, self._uploads / upload.name)
                    return True
        return False

    # ---- create --------------------------------------------------------------------

    def _commit(self, scan: Scan, uploads: Sequence[Upload]) -> None:
        """Move the uploads in, then write scan.json last; undo on any failure."""
        folder = self._scan_dir(scan.id)
        document = encode(scan_to_json(scan))  # before any move: nothing to undo if bad
        moved: list[Upload] = []
        try:
            (folder / "files").mkdir()
            for upload in uploads:
                try:
                    os.rename(self._uploads / upload.name, folder / "files" / upload.name)
                except FileNotFoundError:  # a concurrent create took it first
                    raise PermanentError(f"{self.name}: upload {upload.file_id} is already "
                                         "part of a scan") from None
                moved.append(upload)
            with atomic_writer(folder / SCAN_JSON, "wb") as out:
                out.write(document)
        except BaseException:
            self._undo(folder, moved)
            raise
        with suppress(OSError):  # the scan is committed; some file systems refuse this
            fsync_dir(folder)

    def _undo(self, folder: Path, moved: Sequence[Upload]) -> None:
        """Give the uploads back and drop the half-made scan; what fails stays invisible."""
        try:
            for upload in moved:
                os.rename(folder / "files" / upload.name, self._uploads / upload.name)
            (folder / "files").rmdir()
            folder.rmdir()
        except OSError as exc:
            logger.warning("{}: could not undo the half-made scan {}: {}", self.name, folder,
                           exc)

    # ---- errors --------------------------------------------------------------------

    def _classify(self, exc: OSError, what: str) -> Exception:
        message = f"{self.name}: {what}: {exc.strerror or exc}"
        if isinstance(exc, FileNotFoundError):
            return PermanentError(message)
        if isinstance(exc, PermissionError | NotADirectoryError):
            return FatalError(message)  # the folder itself is unusable as configured
        return TransientError(message)  # e.g. EIO or ESTALE on a network share

    @contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """Turn OS errors into the contract's error classes."""
        try:
            yield
        except OSError as exc:
            raise self._classify(exc, what) from exc
