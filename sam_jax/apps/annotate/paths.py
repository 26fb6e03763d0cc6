"""Safe path handling: images are read only from inside the images folder, files are written only
inside the output folder.

Image names on the wire are relative POSIX paths (``"sub/cat.jpg"``). A name is refused before any
file system access when it is absolute, holds ``..``/``.``/empty parts, backslashes, control
characters or hidden parts; it is refused after resolving symlinks when the real file lies outside
the folder (a symlink pointing out) or inside an excluded folder (the output folder).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
MAX_NAME_CHARS = 1024
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


class PathError(ValueError):
    """A refused path; ``status`` is the HTTP status to answer with (400, 403 or 404)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def check_name(name: object) -> str:
    """``name`` if it is a plausible relative image name, else :class:`PathError` (400)."""
    if not isinstance(name, str) or not name:
        raise PathError("an image name (a relative path inside the images folder) is required", 400)
    if len(name) > MAX_NAME_CHARS:
        raise PathError(f"image name longer than {MAX_NAME_CHARS} characters", 400)
    if _BAD_CHARS.search(name):
        raise PathError("image name contains a backslash or a control character", 400)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise PathError(f"absolute paths are refused: {name!r}", 400)
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise PathError(f"image name must not contain empty, '.' or '..' parts: {name!r}", 400)
        if part.startswith("."):
            raise PathError(f"hidden files and folders are not served: {name!r}", 400)
    return name


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def natural_key(name: str) -> list[object]:
    """Sort key putting ``img2`` before ``img10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class ImageFolder:
    """The images under ``root`` (walked recursively), minus hidden entries and ``exclude`` folders."""

    def __init__(self, root: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()) -> None:
        root = Path(root)
        if not root.is_dir():
            raise NotADirectoryError(f"images folder {root} does not exist or is not a folder")
        self.root = root.resolve()
        self.exclude = tuple(Path(p).resolve() for p in exclude)

    def _allowed(self, real: Path) -> bool:
        return _inside(real, self.root) and not any(_inside(real, ex) for ex in self.exclude)

    def names(self) -> list[str]:
        """Relative names of every image, in natural order (symlinks pointing out are left out)."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            # Prune hidden folders and excluded ones (os.walk does not follow folder symlinks).
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and self._allowed((here / d).resolve())]
            for f in filenames:
                if f.startswith(".") or Path(f).suffix.lower() not in IMAGE_SUFFIXES or _BAD_CHARS.search(f):
                    continue
                path = here / f
                real = path.resolve()
                if self._allowed(real) and real.is_file():
                    found.append(path.relative_to(self.root).as_posix())
        return sorted(found, key=natural_key)

    def resolve(self, name: object) -> Path:
        """The real path of image ``name``; :class:`PathError` (400/403/404) when it is not one."""
        name = check_name(name)
        real = (self.root / name).resolve()
        if not _inside(real, self.root):
            raise PathError(f"{name!r} points outside the images folder", 403)
        if any(_inside(real, ex) for ex in self.exclude):
            raise PathError(f"{name!r} is inside the output folder, not an image to annotate", 403)
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise PathError(f"{name!r} is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})", 404)
        if not real.is_file():
            raise PathError(f"unknown image {name!r}", 404)
        return real


class OutputFolder:
    """The folder annotations are written to; every path it hands out is inside it."""

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    def path(self, name: object, suffix: str = "", *, create_parents: bool = False) -> Path:
        """``root/<name><suffix>`` after checking ``name``; parents are created (and checked one by
        one, so a symlinked folder pointing out is refused) when ``create_parents``."""
        name = check_name(name)
        target = self.root / (name + suffix)
        parent = self.root
        for part in Path(name + suffix).parts[:-1]:
            parent = parent / part
            if create_parents and not parent.exists() and not parent.is_symlink():
                parent.mkdir()
            if parent.exists() and not _inside(parent.resolve(), self.root):
                raise PathError(f"{parent} points outside the output folder", 403)
        if target.is_symlink():
            raise PathError(f"refusing to write through the symlink {target}", 403)
        return target

    def sub(self, *parts: str) -> Path:
        """A fixed folder inside the output folder (created), e.g. the embedding cache."""
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        if not _inside(path.resolve(), self.root):
            raise PathError(f"{path} points outside the output folder", 403)
        return path


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``
    (a reader sees the old or the new file, never a partial one; a crash leaves the old file)."""
    # O_EXCL on a fresh random name: never follows a planted symlink; mode 0o666 honours the umask.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale(folder: Path, keep: Sequence[str], pattern: str) -> None:
    """Delete the files of ``folder`` matching ``pattern`` (a glob) whose names are not in ``keep``."""
    if not folder.is_dir():
        return
    for f in folder.glob(pattern):
        if f.name not in keep and f.is_file() and not f.is_symlink():
            f.unlink(missing_ok=True)
