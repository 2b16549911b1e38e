"""Image file names for downloads: pure functions, no I/O.

``{scan_id}_{section_name}_{store_pog_id}.{ext}``, falling back to only the section,
only the POG, or only the scan ID when the scan lacks them; the 2nd, 3rd … image of a
scan gets ``_2``, ``_3`` …. Names are sanitised so no section name can leave the
images folder or make an invalid file name.
"""

from __future__ import annotations

import re
import unicodedata

from daemon.instances.base import Scan

UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')
SPACES = re.compile(r"\s+")
MAX_NAME_BYTES = 200
MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"),
         (b"RIFF", "webp"), (b"II*\x00", "tif"), (b"MM\x00*", "tif"))


def clean(part: str) -> str:
    """One name part made safe: no separators, control or reserved characters."""
    text = unicodedata.normalize("NFC", part)
    text = UNSAFE.sub("_", text)
    text = SPACES.sub(" ", text).strip(" .")
    return text


def scan_stem(scan: Scan) -> str:
    details = scan.details
    section = clean(details.section_name) if details and details.section_name else ""
    pog = f"_{details.store_planogram_id}" if details and details.store_planogram_id else ""
    # Only the section is shortened to fit: the scan ID and the POG ID always stay.
    room = MAX_NAME_BYTES - len(f"{scan.id}__{pog}_999".encode())
    section = _fit(section, room)
    return f"{scan.id}{'_' + section if section else ''}{pog}"


def file_stems(scan: Scan) -> list[str]:
    """One stem per file of ``scan``, in its file order."""
    stem = scan_stem(scan)
    return [stem if n == 1 else f"{stem}_{n}" for n in range(1, len(scan.files) + 1)]


def extension(original_filename: str | None, head: bytes) -> str:
    """The extension from the original name, else from the file's magic bytes."""
    if original_filename and "." in original_filename:
        ext = original_filename.rsplit(".", 1)[1].lower()
        if re.fullmatch(r"[a-z0-9]{1,8}", ext):
            return "jpg" if ext == "jpeg" else ext
    return next((ext for magic, ext in MAGIC if head.startswith(magic)), "bin")


def _fit(text: str, max_bytes: int) -> str:
    """Trim to ``max_bytes`` of UTF-8 without cutting a character."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode(errors="ignore").rstrip(" ._")
