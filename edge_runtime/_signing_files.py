"""The file side of verifying a signed artifact directory (edge_runtime/_signing.py checks the
bundle and its signature, then calls check_files with the verified statement's file list).

What check_files returns is also what load() holds the rest of the load to (docs/signing.md,
"What a signature covers"): each file's signed sha256, its stat signature taken before it was
hashed (backends/_cache.signature's fields) and the very bytes of manifest.json that matched
the signature. load() parses the manifest from those bytes and open_entry (_model.py) refuses a
file whose stat signature moved since, so a directory swapped in after the check is refused
instead of loaded as "verified".

Bounds, because the files are the attacker's input until they match: model.sig is read only up
to MAX_SIGNATURE_BYTES, and a signed file whose size differs from the size the *signed*
manifest records is reported as modified without being read (a sparse file of terabytes costs no
disk but hours of hashing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat as stat_module
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edge_runtime._errors import SignatureError
from edge_runtime._manifest import MANIFEST_NAME, file_sha256, resolve
from edge_runtime._manifest_bytes import MAX_MANIFEST_BYTES

__all__ = [
    "GIT_PATHS",
    "MAX_MANIFEST_BYTES",
    "MAX_SIGNATURE_BYTES",
    "SHOWN_PROBLEMS",
    "SIGNATURE_NAME",
    "SKIPPED_PATHS",
    "Problems",
    "SignedFiles",
    "check_files",
    "check_still_signed",
    "directory_files",
    "read_bounded",
    "warn_if_writable",
]

log = logging.getLogger("edge_runtime")

SIGNATURE_NAME = "model.sig"
# Where `edge-sign sign` writes model.sig before renaming it (converters/packaging/signing.py).
TMP_SIGNATURE = f".{SIGNATURE_NAME}.tmp"
# model_signing's default git metadata (hashing.Config.hash): skipped at the root by 1.1.x always,
# by 1.0.x only for a model path of "." (see _signing's docstring).
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
# Root-level names the verifier does not require to be signed: the signature and git metadata.
SKIPPED_PATHS = (SIGNATURE_NAME, *GIT_PATHS)
# model.sig holds one statement line per file (~200 bytes each once base64-encoded): 8 MiB is
# ~40,000 files, hundreds of times what an artifact directory holds (edge-convert writes < 50),
# and small enough to read whole on a 1 GB device. Larger is no signature we wrote or would
# accept; reading it whole could exhaust the memory of the device checking it.
MAX_SIGNATURE_BYTES = 8 << 20
# A refusal lists this many problems, then counts the rest: 20,000 added files must not become a
# megabyte-long error (logged again at every edge-serve reload).
SHOWN_PROBLEMS = 20


@dataclass(frozen=True)
class SignedFiles:
    """What a successful check_files verified (module docstring)."""

    digests: dict[str, str] = field(default_factory=dict)  # relative path -> signed sha256
    stats: dict[str, list[int]] = field(default_factory=dict)  # resolved path -> stat signature
    manifest: bytes | None = None  # manifest.json as hashed; None when it is not in the directory


class Problems:
    """What differs between a signature and a directory: every problem counted by kind, the
    first SHOWN_PROBLEMS listed."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def add(self, kind: str, line: str) -> None:
        self.lines.append((kind, line))

    def __bool__(self) -> bool:
        return bool(self.lines)

    def kinds(self) -> set[str]:
        return {kind for kind, _ in self.lines}

    def text(self) -> str:
        # Added files last: they can be thousands, and must not hide a modified model file.
        ordered = sorted(self.lines, key=lambda problem: problem[0] == "added")
        shown = [line for _, line in ordered[:SHOWN_PROBLEMS]]
        rest = [kind for kind, _ in ordered[SHOWN_PROBLEMS:]]
        if rest:
            counts = {kind: rest.count(kind) for kind in dict.fromkeys(rest)}
            shown.append(f"... and {len(rest)} more: "
                         + ", ".join(f"{count} {kind}" for kind, count in counts.items()))
        return "\n  ".join(shown)


def _stat_signature(info: os.stat_result) -> list[int]:
    """backends/_cache.signature's fields, in its order (records compare them as lists)."""
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


def read_bounded(path: Path, limit: int, what: str) -> tuple[bytes, list[int]]:
    """(bytes, stat signature) of the regular file `path`, SignatureError when it is larger than
    `limit`, not a regular file, a link or unreadable. Opened without following a link and
    without blocking (a FIFO put there would otherwise hang the check), then checked."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise SignatureError(f"{path} cannot be read ({exc.strerror}); every file of a signed "
                             "artifact directory must be readable by the user checking it") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat_module.S_ISREG(info.st_mode):
            raise SignatureError(f"{path} is not a regular file (a pipe, socket or device?); {what}")
        if info.st_size > limit:
            raise SignatureError(
                f"{path} is {info.st_size} bytes, more than the {limit} bytes any {path.name} "
                f"can need; {what}"
            )
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew since fstat
        raise SignatureError(f"{path} grew while it was read; {what}")
    return data, _stat_signature(info)


def _walk(root: Path) -> tuple[list[str], list[Path]]:
    """(files as directory_files lists them, the directories below root that hold them)."""

    def unlistable(error: OSError) -> None:
        # os.walk skips a directory it cannot list unless told otherwise, and a file added there
        # would never be seen: a directory the check cannot see whole is refused.
        raise SignatureError(
            f"{error.filename} cannot be listed ({error.strerror}); every directory and file of a "
            "signed artifact directory must be readable by the user checking it (chmod -R a+rX "
            "DIR, or load as its owner)"
        )

    found, directories = [], []
    for current, dirs, files in os.walk(root, onerror=unlistable):
        here = Path(current)
        if here == root:
            dirs[:] = [d for d in dirs if d not in SKIPPED_PATHS]
            files = [f for f in files if f not in SKIPPED_PATHS]
        for name in [*dirs, *files]:
            path = here / name
            if path.is_symlink():
                raise SignatureError(
                    f"{path} is a symbolic link; signed artifact directories hold regular files "
                    "only (replace the link by a copy of the file)"
                )
        directories.extend(here / d for d in dirs)
        for name in files:
            path = here / name
            if not path.is_file():
                raise SignatureError(f"{path} is not a regular file (a pipe, socket or device?)")
            found.append(path.relative_to(root).as_posix())
    return sorted(found, key=lambda p: PurePosixPath(p).parts), directories


def directory_files(root: Path) -> list[str]:
    """Relative POSIX paths of every regular file below `root` that a signature must cover,
    sorted like model_signing sorts them (by path components). Symlinks, special files and
    directories that cannot be listed are refused (SignatureError): model_signing refuses the
    first two too unless told otherwise."""
    return _walk(Path(root))[0]


def _signed_sizes(manifest: bytes) -> dict[str, int]:
    """{relative path: bytes} of every file the (signed) manifest lists with a size; a malformed
    manifest gives what it can (read_manifest says what is wrong with it later)."""
    try:
        data = json.loads(manifest)
    except (ValueError, RecursionError):
        return {}
    items: list[Any] = []
    if isinstance(data, dict):
        for entry in data.get("artifacts") or []:
            if isinstance(entry, dict):
                files = entry.get("files")
                items += (files if isinstance(files, list) else []) + [entry.get("golden")]
        tokenizer = data.get("tokenizer")
        if isinstance(tokenizer, dict) and isinstance(tokenizer.get("files"), list):
            items += tokenizer["files"]
    sizes: dict[str, int | None] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            continue
        size = item.get("bytes")
        if isinstance(size, bool) or not isinstance(size, int):
            continue
        name = PurePosixPath(item["path"]).as_posix()
        sizes[name] = size if sizes.get(name, size) == size else None  # listed twice, two sizes
    return {name: size for name, size in sizes.items() if size is not None}


def check_files(root: Path, signed: dict[str, str]) -> tuple[Problems, SignedFiles]:
    """Problems (empty if none) between the signed file list and the directory's files, and
    what was verified (SignedFiles). manifest.json is checked first, so the sizes it records
    bound what the other files cost to check."""
    root = Path(root)
    names, _ = _walk(root)
    present = set(names)
    problems = Problems()
    for name in sorted(set(signed) - present):
        path = root / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            problems.add("not regular files", f"{name}: signed as a file, but is not a regular file here")
        elif not path.exists():
            problems.add("removed", f"{name}: removed (the signature lists it)")
        elif PurePosixPath(name).parts[0] not in GIT_PATHS:
            # The walk raises on a directory it cannot list, so only a file created meanwhile
            # gets here: the directory is being written while it is checked.
            problems.add("changed while checked", f"{name}: appeared while the directory was checked")
        elif not path.resolve().is_relative_to(root.resolve()):
            problems.add("not regular files", f"{name}: signed as a file, but resolves outside {root}")
        else:  # git metadata the signer did sign: model_signing 1.0.x given the directory by
            # a path other than ".", or --no-ignore-git-paths; checked like any other file
            present.add(name)
    for name in sorted(present - set(signed)):
        if name == TMP_SIGNATURE:
            problems.add("added", f"{name}: added, left by an interrupted `edge-sign sign`: delete it "
                                  "(or sign again)")
        else:
            problems.add("added", f"{name}: added (not covered by the signature)")

    base = root.resolve()
    stats: dict[str, list[int]] = {}
    manifest, sizes = None, {}
    if MANIFEST_NAME in present and MANIFEST_NAME in signed:
        try:
            data, stats[str(base / MANIFEST_NAME)] = read_bounded(
                root / MANIFEST_NAME, MAX_MANIFEST_BYTES, "not the signed manifest")
        except SignatureError as exc:
            problems.add("modified", f"{MANIFEST_NAME}: modified ({exc})")
        else:
            if hashlib.sha256(data).hexdigest() == signed[MANIFEST_NAME]:
                manifest, sizes = data, _signed_sizes(data)
            else:
                problems.add("modified", f"{MANIFEST_NAME}: modified (sha256 differs from the signed one)")
    for name in sorted(present & set(signed) - {MANIFEST_NAME}, key=lambda p: PurePosixPath(p).parts):
        path = root / name
        try:
            before = _stat_signature(os.stat(path))  # before hashing: a write while hashing moves it
            if name in sizes and before[0] != sizes[name]:
                problems.add("modified", f"{name}: modified ({before[0]} bytes; the signed manifest.json "
                                         f"records {sizes[name]}), not read")
                continue
            digest = file_sha256(path)
        except OSError as exc:
            problems.add("unreadable", f"{name}: cannot be read ({exc.strerror or exc}); every signed "
                                       "file must be readable by the user loading it")
            continue
        if digest != signed[name]:
            problems.add("modified", f"{name}: modified (sha256 differs from the signed one)")
        stats[str(base / name)] = before
    return problems, SignedFiles(digests=dict(signed), stats=stats, manifest=manifest)


def warn_if_writable(root: Path) -> None:
    """One warning when the verified directory, a directory in it or one of its files could be
    written by someone other than this user or root (backends/_cache.path_problem's rule, the
    device cache's). The signature is checked at load; after that the backends read the weights
    through memory maps, which follow every later write to the files for as long as the model
    runs (device_cache=False included), so only an unwritable directory keeps the model signed."""
    from edge_runtime.backends._cache import path_problem

    root = Path(root)
    try:
        names, directories = _walk(root)
        for index, path in enumerate([root, *directories, *(root / name for name in names)]):
            problem = path_problem(path, follow=index == 0)
            if problem:
                log.warning(
                    "signed artifact directory %s: %s. Its signature was checked, but what runs "
                    "follows later writes to its files for as long as the model runs: make the "
                    "directory and its files writable by their owner only (chmod -R go-w %s), "
                    "owned by this user or root", root, problem, root,
                )
                return
    except (OSError, SignatureError):  # changed meanwhile: the load's own checks say what
        return
    problem = _parent_problem(root)
    if problem:
        log.warning(
            "signed artifact directory %s: %s, so whoever can write it can put another directory in "
            "its place after the check: keep the directories above a signed one writable by their "
            "owner only, owned by this user or root (a sticky directory such as /tmp is fine)", root, problem)


def _parent_problem(root: Path) -> str:
    """path_problem of the first directory above `root` (resolved) that someone other than this
    user or root could write, "" when none: writing a parent replaces what the path names.
    Sticky directories (mode +t, e.g. /tmp) are passed: there, only an entry's owner may rename
    or remove it."""
    from edge_runtime.backends._cache import path_problem

    try:
        parents = Path(os.path.realpath(root)).parents
        for parent in parents:
            if os.stat(parent).st_mode & stat_module.S_ISVTX:
                continue
            problem = path_problem(parent, follow=True)
            if problem:
                return problem
    except OSError:  # a parent we cannot stat says nothing more than the load's own checks
        return ""
    return ""


def check_still_signed(root: Path, items: list[dict[str, Any]], now: dict[str, list[int]],
                       signed: dict[str, list[int]]) -> None:
    """SignatureError unless every item that exists is a file verify_directory hashed, with the
    stat signature it had then: a file renamed in (a directory swapped in after the check has
    other inodes) or written since was not what the signature was checked against. A signed
    file missing now was removed since (with verify=False nothing else would say so, and a
    tokenizer read at its first use could be any file put back later); one the signature never
    saw is left to verify_files and the backend, which say so."""
    for item in items:
        path = str(resolve(root, item["path"]))
        if path not in now and path not in signed:
            continue
        if path not in now:
            problem = "was removed since its signature was checked"
        elif path not in signed:
            problem = "is not among the files its signature was checked against"
        elif signed[path] != now[path]:
            problem = "was replaced or written since its signature was checked"
        else:
            continue
        raise SignatureError(
            f"{item['path']} of {root} {problem}: something changes the artifact directory while "
            "load() runs. Keep it writable by its owner only, and load again once it is settled"
        )
