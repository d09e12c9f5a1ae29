"""Signing a finished artifact directory: `model.sig` in the OpenSSF model-signing format.

    key = load_signing_key(Path("key.pem"))     # early: a bad key fails before the conversion
    sign_directory(stage, key, model_name="minilm-x86")
    generate_key_pair(Path("key.pem"), Path("key.pub"))

The signature is what `model_signing sign key` writes: a Sigstore bundle whose DSSE envelope
holds an in-toto statement listing every file's sha256. One model.sig is accepted by
`model_signing verify key` of both model-signing 1.0.x and 1.1.x (tested with 1.0.1 and 1.1.1)
and by `edge_runtime.load(path, trusted_keys=[...])`: we write the parts the two versions agree
on (whole-file sha256, sorted resources, v1.0 predicate) plus 1.1.x's additions that 1.0.x
ignores (the key hint; `ignore_paths`, so 1.1.x's API verifier skips model.sig). The one
directory no single signature can serve is one holding git metadata at its root (`.git`, ...),
which 1.0.x hashes or skips depending on how the directory is named and 1.1.x always skips: we
refuse to sign it. The format's details are in edge_runtime/_signing.py, whose constants and
helpers both sides share; tests/test_signing.py checks our signatures with the real packages and
theirs with edge_runtime. Only `cryptography` is used: nothing is sent anywhere (no Sigstore, no
transparency log, no certificate).

Signatures are deterministic ECDSA (RFC 6979, cryptography >= 44): the same key, the same files
and the same directory name (the subject) give the same model.sig bytes, so re-converting a model
into the same --out reproduces its signature too.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from converters._errors import ConversionError
from edge_runtime import _signing
from edge_runtime._errors import SignatureError
from edge_runtime._manifest import file_sha256

__all__ = [
    "SigningCheck",
    "SigningKeyError",
    "check_before_signing",
    "generate_key_pair",
    "key_file_hint",
    "key_hint_of",
    "load_signing_key",
    "sign_directory",
    "statement",
]

log = logging.getLogger("converters.packaging.signing")


class SigningKeyError(ConversionError):
    """The signing key cannot be used. `parameter` names the argument (sign_key, ...), `detail`
    says why, so a CLI can name its own flag instead."""

    def __init__(self, parameter: str, path: Path, detail: str):
        self.parameter, self.path, self.detail = parameter, path, detail
        super().__init__(f"{parameter}={path}: {detail}")


def load_signing_key(path: Path, parameter: str = "sign_key", tool: str = "edge-convert"):
    """The EC private key in PEM file `path` (P-256, or P-384 / P-521 as model_signing allows).
    tool: the command the errors name (edge-convert --sign-key, edge-sign sign --key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(parameter, path, f"cannot be read ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted: cryptography wants a password
        raise SigningKeyError(
            parameter,
            path,
            f"the key is password-protected; {tool} signs with unencrypted keys only. "
            "Decrypt a copy on the signing machine: openssl pkey -in KEY.pem -out plain.pem",
        ) from None
    except ValueError:
        hint = (
            " (this is a public key: sign with its private half)" if b"PUBLIC KEY" in data else ""
        )
        raise SigningKeyError(
            parameter,
            path,
            f"not a PEM private key{hint}. Create a key pair with "
            "`edge-sign keygen KEY.pem KEY.pub`",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SigningKeyError(
            parameter,
            path,
            f"an {type(key).__name__.lstrip('_').replace('PrivateKey', '')} key; model signing uses "
            "elliptic-curve keys (P-256, P-384 or P-521): create a pair with `edge-sign keygen KEY.pem KEY.pub`",
        )
    try:
        _signing.ecdsa_hash(key.curve.name)
    except SignatureError as exc:
        raise SigningKeyError(parameter, path, str(exc)) from None
    return key


def key_hint_of(key) -> str:
    """The hint model.sig records for a signing key (hex sha256 of its public key's PEM)."""
    return _signing.key_hint(key.public_key())


def key_file_hint(path: Path) -> str:
    """The hint of the key in PEM file `path`, a public key or an unencrypted private key (its
    public half's): what a device's "no trusted key verifies this signature" error quotes, to
    tell which key signed. ConversionError when the file holds neither."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConversionError(f"{path} cannot be read ({exc.strerror})") from None
    blocks = data.count(b"-----BEGIN ")
    if blocks > 1:  # cryptography reads the first: a hint of one key, for a file load() refuses
        raise ConversionError(f"{path} holds {blocks} PEM blocks; a key file holds one key (give each "
                              "its own file, as load()'s trusted_keys takes them)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm):
            raise ConversionError(f"{path} is not a PEM public key or unencrypted private key") from None
    if not isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        raise ConversionError(f"{path} is {_signing.key_kind(key)}, which cannot sign or verify model.sig "
                              "here: model signing uses elliptic-curve keys on P-256 (or P-384 / P-521)")
    return key_hint_of(key) if isinstance(key, ec.EllipticCurvePrivateKey) else _signing.key_hint(key)


def _refuse_git_metadata(root: Path) -> None:
    """model_signing 1.0.x hashes root-level git metadata unless given the directory as "."
    (its skip list is compared against prefixed paths) and 1.1.x never hashes it, so a statement
    over a directory holding any cannot verify with both: refuse it."""
    found = [name for name in _signing.GIT_PATHS if os.path.lexists(root / name)]
    if found:
        raise ConversionError(
            f"cannot sign {root}: it holds git metadata at its root ({', '.join(found)}). "
            "model_signing 1.0.x covers those files (unless run on '.') and 1.1.x never does, so "
            "no signature over this directory verifies with both. Remove them, or sign a copy "
            "without them (artifact directories written by edge-convert never have them)"
        )


def statement(root: Path, model_name: str) -> dict[str, Any]:
    """The in-toto statement over every file of `root` (model_signing's v1.0 predicate)."""
    _refuse_git_metadata(root)
    try:
        names = _signing.directory_files(root)
    except SignatureError as exc:  # a symlink or special file: model_signing refuses them too
        raise ConversionError(f"cannot sign {root}: {exc}") from None
    resources = []
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ConversionError(f"cannot sign {root}: file name {name!r} is not UTF-8") from None
        try:
            digest = file_sha256(root / name)
        except OSError as exc:
            raise ConversionError(f"cannot sign {root}: {name} cannot be read ({exc.strerror or exc}); "
                                  "make it readable by the signing user") from None
        resources.append({"name": name, "algorithm": "sha256", "digest": digest})
    return {
        "_type": _signing.STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": _signing.root_digest(resources)}}],
        "predicateType": _signing.PREDICATE_TYPE,
        "predicate": {
            # What a verifier needs to re-hash the directory the same way. ignore_paths is
            # 1.1.x's: its verifier adds them to its skip list (so its API skips model.sig with
            # no hashing config); 1.0.x's manifest parser ignores the key.
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": sorted(_signing.SKIPPED_PATHS),
            },
            "resources": resources,
        },
    }


def _sign(key, message: bytes) -> bytes:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec

    algorithm = _signing.ecdsa_hash(key.curve.name)
    try:
        return key.sign(message, ec.ECDSA(algorithm, deterministic_signing=True))
    except (TypeError, UnsupportedAlgorithm):  # cryptography < 44 or OpenSSL < 3.2
        log.warning(
            "deterministic ECDSA is not available here (needs cryptography >= 44 with "
            "OpenSSL >= 3.2): model.sig is valid but differs between runs"
        )
        return key.sign(message, ec.ECDSA(algorithm))


@dataclass(frozen=True)
class SigningCheck:
    """What check_before_signing found: the artifacts whose files are all absent (a device copy
    trimmed to the artifacts it runs; the signature covers what is there) and the files
    manifest.json does not list (signed only when asked for: include_extra)."""

    absent: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


def check_before_signing(
    root: Path, key_path: Path | None = None, include_extra: bool = False
) -> SigningCheck:
    """ConversionError unless `root` holds what its manifest.json lists, and only that:

    - each artifact is there whole (its files and golden sample, with their recorded size and
      sha256, and the tokenizer) or not at all: an unsigned load skips an artifact none of whose
      model files is there (edge_runtime/_select.py, files_absent) and verifies the others, so a
      signature over a directory it would refuse is refused. At least one artifact is there;
    - the signing key (`key_path`, SigningKeyError) is not inside it, and no other file is a PEM
      private key: whatever is signed ships to every device;
    - a file the manifest does not list (notes, a bench.json, editor backups) is refused, named,
      unless `include_extra`.

    A signature attests to the directory as it is, and a device would refuse an artifact whose
    bytes moved on anyway, with the signer's name on it."""
    from edge_runtime._errors import EdgeRuntimeError
    from edge_runtime._manifest import files_to_verify, read_manifest, resolve, verify_files
    from edge_runtime._select import files_absent

    root = Path(root)
    _refuse_git_metadata(root)
    if key_path is not None and Path(key_path).resolve().is_relative_to(root.resolve()):
        raise SigningKeyError(
            "sign_key", Path(key_path),
            f"{key_path} lies inside {root}, the directory to sign: the private key would be "
            "signed and shipped to every device. Keep the key outside artifact directories",
        )
    absent: list[str] = []
    try:
        manifest = read_manifest(root)
        listed: dict[str, dict] = {}
        for entry in manifest["artifacts"]:
            golden = resolve(root, entry["golden"]["path"])
            if files_absent(root, entry) and not os.path.lexists(golden):
                absent.append(entry["name"])  # left out whole, as an unsigned load allows
                continue
            if files_absent(root, entry):
                raise ConversionError(
                    f"not signing {root}: artifact {entry['name']!r} has none of its model files "
                    f"here but its golden sample {entry['golden']['path']} is: leave an artifact "
                    "out whole (delete that file too) or restore its model files"
                )
            listed.update({item["path"]: item for item in files_to_verify(manifest, entry)})
        if len(absent) == len(manifest["artifacts"]):
            raise ConversionError(f"not signing {root}: none of the artifacts its manifest lists "
                                  f"is here ({', '.join(absent)})")
        verify_files(root, list(listed.values()))
    except EdgeRuntimeError as exc:  # a malformed manifest, or files that are not what it lists
        raise ConversionError(f"not signing {root}: {exc}; convert it again (or restore the files) "
                              "before signing; an artifact a device does not need may be left "
                              "out whole (every file of it and its golden sample)") from None
    try:
        present = _signing.directory_files(root)
    except SignatureError as exc:  # a symlink or special file: statement() refuses it too
        raise ConversionError(f"cannot sign {root}: {exc}") from None
    known = {PurePosixPath(path).as_posix() for path in listed} | {"manifest.json"}
    known.add(f".{_signing.SIGNATURE_NAME}.tmp")  # a crashed signing's leftover: replaced
    extra = [name for name in present if name not in known]
    keys = [name for name in extra if _is_private_key(root / name)]
    if keys:
        raise ConversionError(f"not signing {root}: {', '.join(keys)} "
                              f"{'is a private key' if len(keys) == 1 else 'are private keys'}; "
                              "a signed directory ships to every device. Move "
                              f"{'it' if len(keys) == 1 else 'them'} out of the directory")
    if extra and not include_extra:
        raise ConversionError(
            f"not signing {root}: manifest.json does not list {', '.join(extra)}; signed, "
            f"{'it' if len(extra) == 1 else 'they'} would ship to every device. Remove "
            f"{'it' if len(extra) == 1 else 'them'}, or pass include_extra=True to sign "
            f"{'it' if len(extra) == 1 else 'them'} too"
        )
    return SigningCheck(absent=absent, extra=extra)


def _is_private_key(path: Path) -> bool:
    """Whether `path` holds a PEM private key (PKCS#8, SEC1 "EC PRIVATE KEY", encrypted or not;
    openssl ecparam puts EC PARAMETERS first). Keys are small: larger files are not read."""
    try:
        if path.stat().st_size > 65536:
            return False
        data = path.read_bytes()
    except OSError:
        return False
    return b"-----BEGIN" in data and b"PRIVATE KEY-----" in data


def sign_directory(root: Path, key, model_name: str | None = None) -> Path:
    """Write `root/model.sig` over every file of `root` (any existing model.sig is replaced).

    key: from load_signing_key(). model_name: the subject's name, informative only (model_signing
    uses the directory's name; pass the final name when signing a staging directory).
    """
    root = Path(root)
    tmp = root / f".{_signing.SIGNATURE_NAME}.tmp"  # written, then renamed: never half-written
    try:
        tmp.unlink(missing_ok=True)  # a crashed earlier run's leftover is no artifact file
    except OSError as exc:  # a directory of that name, say: not ours to remove
        raise ConversionError(f"{tmp} cannot be removed ({exc.strerror or exc}): edge-sign writes the signature "
                              "there first; move it out of the artifact directory") from None
    payload = json.dumps(statement(root, model_name or root.resolve().name), indent=2).encode()
    signature = _sign(key, _signing.pae(_signing.PAYLOAD_TYPE, payload))
    bundle = {
        "mediaType": _signing.BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": _signing.key_hint(key.public_key())},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": _signing.PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }
    path = root / _signing.SIGNATURE_NAME
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(bundle, indent=2) + "\n")
            handle.flush()
            # On disk before the rename: after a power loss the rename may survive without the
            # data on file systems that do not order them (ext4 without auto_da_alloc, XFS, ...),
            # leaving an empty model.sig in place of the old one.
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise ConversionError(f"cannot write {path}: {exc.strerror or exc}; the directory must be writable "
                              f"and {path.name} a file") from None
    finally:  # on any way out, Ctrl-C included: a leftover would ship and be refused as "added"
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def generate_key_pair(
    private_path: Path, public_path: Path, overwrite: bool = False
) -> tuple[Path, Path]:
    """A new P-256 key pair: the private key as unencrypted PKCS#8 PEM, readable by its owner
    only (0600), and the public key as SubjectPublicKeyInfo PEM (what devices trust)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise SigningKeyError("public_path", public_path, "is the same file as private_path")
    for parameter, path in (("private_path", private_path), ("public_path", public_path)):
        if path.is_symlink() and not path.exists():  # writing would follow it wherever it points
            raise SigningKeyError(
                parameter, path, f"{path} is a dangling symbolic link (to {os.readlink(path)}, "
                "which does not exist); remove the link, or name another path"
            )
        if path.exists() and not overwrite:
            raise SigningKeyError(
                parameter, path, "already exists; pass overwrite=True to replace it"
            )
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    written = None
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        public_path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            private_path.unlink(missing_ok=True)
        # Created with mode 0600 from the start: never briefly readable by others.
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        written = private_path
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        if written is not None:  # no private key without its public half
            written.unlink(missing_ok=True)
        where = exc.filename or private_path
        on_the_way = exc.errno in (errno.ENOTDIR, errno.EEXIST)  # a file where a directory goes
        hint = " (a directory, not a file, on the way)" if on_the_way else ""
        raise ConversionError(f"cannot write the key pair: {where}: {exc.strerror or exc}; choose a writable "
                              f"place{hint}") from None
    return private_path, public_path
