"""Safe extraction of uploaded zip files (zip-slip, links and zip bombs refused) and upload limits."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .taxonomy import is_ignored_name


class UploadError(ValueError):
    """An upload refused, with a message meant for the user."""


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class Limits:
    """Upload and job limits; each can be set by an environment variable (safe defaults for a public Space)."""

    max_upload_mb: int = 200  # HIERDEMO_MAX_UPLOAD_MB: compressed upload size
    max_extracted_mb: int = 1000  # HIERDEMO_MAX_EXTRACTED_MB: total uncompressed size
    max_files: int = 20000  # HIERDEMO_MAX_FILES: entries in a zip
    max_ratio: int = 200  # HIERDEMO_MAX_RATIO: uncompressed / compressed size of one entry
    max_images: int = 5000  # HIERDEMO_MAX_IMAGES: images in a training job
    max_epochs: int = 30  # HIERDEMO_MAX_EPOCHS
    job_seconds: int = 1800  # HIERDEMO_JOB_SECONDS: a training job's time limit
    max_queue: int = 4  # HIERDEMO_MAX_QUEUE: jobs waiting behind the running one
    min_images_per_class: int = 2  # HIERDEMO_MIN_IMAGES_PER_CLASS: smaller classes are left out and reported

    @classmethod
    def from_env(cls) -> Limits:
        return cls(**{f: _env_int(f"HIERDEMO_{f.upper()}", getattr(cls, f)) for f in cls.__dataclass_fields__})


def check_member(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's safe relative path; refuses absolute paths, ``..``, drive letters and links."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise UploadError(f"refused: the zip holds an absolute path ({info.filename})")
    if ".." in path.parts:
        raise UploadError(f"refused: the zip holds a path that leaves its folder ({info.filename})")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UploadError(f"refused: the zip holds a link ({info.filename})")
    return path


def safe_extract(zip_path: str | Path, dest: str | Path, limits: Limits | None = None) -> Path:
    """Extract ``zip_path`` into the new folder ``dest`` after checking every entry; on any refusal nothing is
    left behind. Sizes are counted while writing too, so a zip that lies in its headers is still stopped."""
    limits = limits or Limits.from_env()
    zip_path, dest = Path(zip_path), Path(dest)
    if zip_path.stat().st_size > limits.max_upload_mb * 2**20:
        raise UploadError(f"refused: the upload is larger than {limits.max_upload_mb} MB")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise UploadError("refused: the file is not a valid zip archive") from None
    budget = limits.max_extracted_mb * 2**20
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise UploadError(f"refused: the zip holds {len(infos)} entries (limit {limits.max_files})")
        members = [(info, check_member(info)) for info in infos]
        if sum(i.file_size for i in infos) > budget:
            raise UploadError(f"refused: the zip unpacks to more than {limits.max_extracted_mb} MB")
        for info in infos:
            if info.file_size > 1_000_000 and info.file_size > limits.max_ratio * max(1, info.compress_size):
                raise UploadError(f"refused: {info.filename} is compressed suspiciously well (a zip bomb?)")
        dest.mkdir(parents=True, exist_ok=False)
        written = 0
        try:
            for info, rel in members:
                if any(is_ignored_name(part) for part in rel.parts):
                    continue
                target = dest.joinpath(*rel.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > budget:
                            raise UploadError(f"refused: the zip unpacks to more than {limits.max_extracted_mb} MB")
                        out.write(chunk)
        except BaseException as exc:
            shutil.rmtree(dest, ignore_errors=True)
            if isinstance(exc, (zipfile.BadZipFile, EOFError, OSError)) and not isinstance(exc, UploadError):
                raise UploadError(f"refused: the zip is damaged ({type(exc).__name__})") from None
            raise
    return dest


def data_root(folder: Path) -> Path:
    """Descend through a lone wrapping folder (a zip of ``my_data/...``) to where the classes start."""
    while True:
        entries = [p for p in folder.iterdir() if not is_ignored_name(p.name)]
        if len(entries) == 1 and entries[0].is_dir():
            inner = [p for p in entries[0].iterdir() if not is_ignored_name(p.name)]
            if inner and all(p.is_dir() for p in inner):
                folder = entries[0]
                continue
        return folder


def new_workdir(prefix: str) -> Path:
    """A fresh private temporary folder (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=f"hierdemo-{prefix}-"))
