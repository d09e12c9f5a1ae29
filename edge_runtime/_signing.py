"""Verifying `model.sig`: an artifact directory signed in the OpenSSF model-signing format.

`edge_runtime.load(path, trusted_keys=[...])` calls verify_directory() before it reads anything
else from the directory. Only `cryptography` is needed (the `[verify]` extra of the device
wheel), imported on first use: model_signing and sigstore stay on the workstation.

The format, as written and read by `model-signing` 1.0.1 and 1.1.1 (sigstore/model-transparency;
read in model_signing/_signing/{signing,sign_ec_key,sign_sigstore_pb}.py, manifest.py, hashing.py,
verifying.py and _serialization/{file,serialization}.py of both releases, and checked in every
direction by tests/test_signing.py: the test extra's 1.0.x in the fast tests, 1.1.x in a venv of
its own in a slow one):

- `model.sig` is a Sigstore bundle in JSON: `mediaType`
  "application/vnd.dev.sigstore.bundle.v0.3+json"; `verificationMaterial` naming the signer's key;
  `dsseEnvelope` {"payload": base64(P), "payloadType": "application/vnd.in-toto+json",
  "signatures": [{"sig": base64(DER ECDSA signature), "keyid": ""}]}. No certificate, no
  transparency-log entry: key-based verification contacts no service.
- The key is named two ways, neither of them signed. 1.1.x writes {"publicKey": {"hint": H},
  "tlogEntries": []}, H the lowercase hex sha256 of the key as SubjectPublicKeyInfo PEM
  (cryptography's serialization, trailing newline included), and refuses a bundle whose H is not
  the verifying key's ("Key mismatch"). 1.0.x writes {"publicKey": {"rawBytes": base64(that PEM),
  "keyDetails": "PKIX_ECDSA_P256_SHA_256"}} and `"keyid": null`, and ignores the material when
  verifying. Both parse the other's form (1.1.x drops rawBytes/keyDetails with a warning; 1.0.x's
  protobuf reader takes the hint form), so edge-convert writes the hint form.
- The signature is ECDSA over DSSE's pre-authentication encoding (DSSE v1.0 protocol.md):
  PAE = b"DSSEv1 " + len(type) + b" " + type + b" " + len(P) + b" " + P (lengths in decimal
  ASCII), hashed with SHA-256 for P-256 (SHA-384 for P-384, SHA-512 for P-521), encoded as DER.
  Both versions verify signatures[0] only (and also accept a buggy pre-1.0 PAE, "DSSEV1 ...
  b'...'", which we do not).
- P is an in-toto Statement v1 (JSON; key order and whitespace are free): `_type`
  "https://in-toto.io/Statement/v1"; `predicateType` "https://model_signing/signature/v1.0";
  one `subject` {"name": directory name (informative only), "digest": {"sha256": R}};
  `predicate` {"serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks":
  false[, "ignore_paths": [...]]}, "resources": [{"name": relative POSIX path, "algorithm":
  "sha256", "digest": hex sha256 of the whole file}, ...]}. R is the sha256 of the concatenated
  raw 32-byte resource digests in the order listed; both versions list them sorted by path
  components (pathlib.PurePosixPath ordering) and recompute R in listed order when verifying.
  Files are hashed whole (method "files"); "shards" (`--shard`) and blake2/blake3 exist but are
  not defaults. `ignore_paths` is new in 1.1.x, which writes the paths it skipped (relative) and
  adds them to its ignore list when verifying; 1.0.x neither writes nor reads it (its manifest
  parser ignores unknown keys), so our statement carries it for 1.1.x's sake.
- Files: every regular file below the directory, recursively, dotfiles included, except the
  signature itself and root-level git metadata (`.git/`, `.gitattributes`, `.github/`,
  `.gitignore`). The versions disagree on the git metadata: 1.1.x always skips it (by default);
  1.0.x's skip list is relative paths compared against paths prefixed by the model path as given,
  so it skips them only when given the directory as "." and hashes them otherwise (its signature
  file is skipped only when `--signature` is spelled with the same prefix as the directory). No
  statement over a directory holding git metadata verifies with both, so edge-convert refuses to
  sign one; this verifier skips such files unless the statement lists them, and then checks them.
  Empty directories are not recorded. Symlinks make model_signing fail unless allowed; we refuse
  them (a link could point outside the directory).
- Verifying with the Python API without an explicit hashing config: 1.1.x guesses it from the
  statement, ignore_paths included, so a model.sig inside the directory is skipped; 1.0.x ignores
  nothing, so its `verifying.Config().verify(DIR, DIR/"model.sig")` always fails on model.sig
  itself unless given `set_hashing_config(hashing.Config().set_ignored_paths(paths=[sig]))`
  (its CLI does that). 1.0.x's `signing.Config()` sets up a Sigstore signer in its constructor,
  which fetches Sigstore's TUF root over the network, so 1.0.x's `sign key` fails offline (1.1.x
  defers this; its `sign key` works offline).

What this verifier decides (where it differs from `model_signing verify key`, it is stricter,
or accepts only what is equally safe):
- a signature by one of the trusted keys (each a PEM public key) over the exact payload, in any
  entry of `signatures` (model_signing checks the first only; every entry signs the same payload);
- when the bundle names a key (1.1.x's hint or 1.0.x's rawBytes), it must be the key that
  verified (1.1.x refuses a mismatching hint too; the material is not signed, so checking it only
  ever narrows what is accepted);
- the statement's resources are exactly the directory's files apart from the skipped paths
  above, each with the recorded sha256. A resource the signer chose to leave out (model_signing's
  `--ignore-paths`) is refused here as a file the signature does not cover: edge_runtime trusts
  no byte of an artifact that is not signed;
- what it reads before a file matches is bounded (model.sig's size, a file's size against the
  signed manifest's), and what it verified (digests, stat signatures, the manifest's bytes) is
  returned for load() to hold the rest of the load to: _signing_files.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence, Union

from edge_runtime._errors import SignatureError
from edge_runtime._signing_files import (  # the file side; re-exported: converters use them
    GIT_PATHS,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_NAME,
    SKIPPED_PATHS,
    SignedFiles,
    check_files,
    directory_files,
    read_bounded,
    warn_if_writable,
)

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "GIT_PATHS",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "SIGNATURE_NAME",
    "SKIPPED_PATHS",
    "STATEMENT_TYPE",
    "KeySource",
    "SignedFiles",
    "VerifiedSignature",
    "directory_files",
    "ecdsa_hash",
    "key_hint",
    "pae",
    "root_digest",
    "verify_directory",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
_PREDICATE_TYPE_PRE_1_0 = "https://model_signing/Digests/v0.1"
# Curves model_signing accepts (sign_ec_key._check_supported_ec_key), with the hash it pairs.
_CURVE_HASH = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}

# A trusted key: a path to a PEM file, or the PEM bytes themselves.
KeySource = Union[str, "os.PathLike[str]", bytes]


@dataclass(frozen=True)
class VerifiedSignature:
    key: str  # which trusted key verified it (path, or "trusted_keys[i]")
    key_hint: str  # sha256 of the key's SubjectPublicKeyInfo PEM (model_signing's hint)
    files: int  # files covered and checked
    # What was verified, which the rest of a load is held to: the signed digests, each file's stat
    # signature taken before it was hashed, and manifest.json's bytes as hashed (_signing_files).
    checked: SignedFiles = field(default_factory=SignedFiles, repr=False)


def _crypto():
    """The `cryptography` modules, or an error saying how to install them."""
    try:
        from cryptography import exceptions
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        raise SignatureError(
            "checking signatures (trusted_keys) needs the 'cryptography' package, which is not "
            "installed: pip install cryptography (the device wheel's [verify] extra)"
        ) from None
    return exceptions, hashes, serialization, ec


def ecdsa_hash(curve_name: str):
    """The hash model_signing pairs with an EC curve; SignatureError for unsupported curves."""
    _, hashes, _, _ = _crypto()
    if curve_name not in _CURVE_HASH:
        raise SignatureError(
            f"EC curve {curve_name} is not supported; model signing uses P-256 (secp256r1), "
            "P-384 or P-521"
        )
    return getattr(hashes, _CURVE_HASH[curve_name])()


def key_kind(key) -> str:
    """ "an RSA public key", "an Ed25519 private key", ...: what a key that cannot sign here is."""
    name = type(key).__name__.lstrip("_")  # e.g. RSAPublicKey, _RSAPrivateKey, Ed25519PublicKey
    side = "private" if "Private" in name else "public"
    algorithm = name.replace("PublicKey", "").replace("PrivateKey", "") or name
    article = "an" if algorithm[:1] in "AEFHILMNORSX" else "a"  # as spoken: an RSA, an Ed25519, a DSA
    return f"{article} {algorithm} {side} key"


def key_hint(public_key) -> str:
    """model_signing's key identifier: hex sha256 of the SubjectPublicKeyInfo PEM."""
    _, _, serialization, _ = _crypto()
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the ECDSA signature covers."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def root_digest(resources: Iterable[dict[str, Any]]) -> str:
    """The subject's sha256: over the raw resource digests, in the order given."""
    digest = hashlib.sha256()
    for resource in resources:
        digest.update(bytes.fromhex(resource["digest"]))
    return digest.hexdigest()


def _load_trusted_key(source: KeySource, index: int):
    """(label, public key) of one entry of trusted_keys."""
    exceptions, _, serialization, ec = _crypto()
    if isinstance(source, bytes):
        label, data = f"trusted_keys[{index}]", source
    elif isinstance(source, str) and "-----BEGIN" in source:  # PEM text (no path holds that)
        label, data = f"trusted_keys[{index}]", source.encode("ascii", "replace")
    elif isinstance(source, (str, os.PathLike)):
        label = os.fspath(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise SignatureError(f"trusted key {label} cannot be read: {exc.strerror}") from None
        except ValueError as exc:  # a NUL byte in the path: no file can have that name
            raise SignatureError(f"trusted key {label!r} is not a usable path: {exc}") from None
    else:
        raise SignatureError(
            f"trusted_keys[{index}] is a {type(source).__name__}; expected a path to a PEM public "
            "key, or the PEM text (str or bytes)"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise SignatureError(f"trusted key {label} {_not_a_public_key(data)}") from None
    except exceptions.UnsupportedAlgorithm as exc:  # an EC key on a curve OpenSSL does not know
        raise SignatureError(
            f"trusted key {label} is a public key this device cannot use ({exc}); model signing "
            "uses elliptic-curve keys on P-256 (or P-384 / P-521)"
        ) from None
    blocks = data.count(b"-----BEGIN ")
    if blocks > 1:  # cryptography reads the first and ignores the rest: a key silently untrusted
        raise SignatureError(
            f"trusted key {label} holds {blocks} PEM blocks; give each public key separately, "
            "one trusted_keys entry per key"
        )
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(f"trusted key {label} is {key_kind(key)}; model signing uses elliptic-curve "
                             "keys on P-256 (or P-384 / P-521)")
    try:
        ecdsa_hash(key.curve.name)  # refuses unsupported curves with the key's curve named
    except SignatureError as exc:
        raise SignatureError(f"trusted key {label}: {exc}") from None
    return label, key


def _not_a_public_key(data: bytes) -> str:
    """Why a trusted key is not a PEM public key, and what to give instead."""
    if not data.strip():
        return ("is not a PEM public key: it is empty (give the signer's public key, "
                "'-----BEGIN PUBLIC KEY-----')")
    if b"PRIVATE KEY" in data:
        return ("is not a PEM public key but a private key, which must never be copied to a "
                "device: give its public half (edge-sign keygen writes it; openssl pkey -pubout)")
    if b"CERTIFICATE" in data:
        return ("is not a PEM public key but a certificate; give its key "
                "(openssl x509 -pubkey -noout -in CERT > KEY.pub)")
    if not data.lstrip().startswith(b"-----BEGIN"):
        return ("is not a PEM public key (expected '-----BEGIN PUBLIC KEY-----'; a DER key "
                "converts with openssl pkey -pubin -inform DER -in KEY -out KEY.pub)")
    return "is not a PEM public key (expected '-----BEGIN PUBLIC KEY-----')"


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise SignatureError(f"{where}: `{key}` is missing or not a {kind.__name__}")
    return value


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{where} is not valid base64") from None


def _read_bundle(sig_path: Path) -> tuple[dict, str, bytes, list[bytes]]:
    """(bundle, payload type, payload, DER signatures) with every structural check made."""
    data, _ = read_bounded(sig_path, MAX_SIGNATURE_BYTES, "it is no signature edge-sign or "
                           "model_signing writes: get a fresh copy of the signed directory")
    try:
        bundle = json.loads(data.decode("utf-8"))
    except ValueError as exc:  # JSON and UTF-8 errors, and ints past Python's 4300-digit limit
        raise SignatureError(f"{sig_path} is not a JSON Sigstore bundle: {exc}") from None
    except RecursionError:  # as the manifest reader: a file of "[[[..." is not a bundle either
        raise SignatureError(
            f"{sig_path} is not a JSON Sigstore bundle: JSON nested too deeply"
        ) from None
    where = str(sig_path)
    if not isinstance(bundle, dict):
        raise SignatureError(f"{where}: top level must be an object")
    media = bundle.get("mediaType")
    if media != BUNDLE_MEDIA_TYPE:
        raise SignatureError(
            f"{where}: mediaType {media!r}; expected {BUNDLE_MEDIA_TYPE!r} (key-signed model "
            "signature: edge-convert --sign-key, or model_signing sign key)"
        )
    envelope = _field(bundle, "dsseEnvelope", dict, where)
    payload_type = _field(envelope, "payloadType", str, f"{where}: dsseEnvelope")
    if payload_type != PAYLOAD_TYPE:
        raise SignatureError(f"{where}: payloadType {payload_type!r}; expected {PAYLOAD_TYPE!r}")
    payload = _b64(_field(envelope, "payload", str, f"{where}: dsseEnvelope"), f"{where}: payload")
    entries = _field(envelope, "signatures", list, f"{where}: dsseEnvelope")
    if not entries:
        raise SignatureError(f"{where}: the DSSE envelope holds no signature")
    signatures = []
    for i, entry in enumerate(entries):
        sig = _field(entry, "sig", str, f"{where}: signatures[{i}]")
        signatures.append(_b64(sig, f"{where}: signatures[{i}].sig"))
    return bundle, payload_type, payload, signatures


def _statement_resources(payload: bytes, where: str) -> dict[str, str]:
    """{path: sha256} from a verified payload, after checking the statement's structure."""
    try:
        statement = json.loads(payload)
    except ValueError as exc:  # not JSON, not UTF-8, or an integer past Python's 4300-digit limit
        raise SignatureError(f"{where}: the signed payload is not JSON: {exc}") from None
    except RecursionError:
        raise SignatureError(
            f"{where}: the signed payload is not JSON: nested too deeply"
        ) from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise SignatureError(f"{where}: the signed payload is not an in-toto {STATEMENT_TYPE}")
    kind = statement.get("predicateType")
    if kind == _PREDICATE_TYPE_PRE_1_0:
        raise SignatureError(
            f"{where}: signed by model_signing < 1.0 ({kind}), whose statement does not bind the "
            "file list; re-sign with edge-convert's signing or model_signing >= 1.0"
        )
    if kind != PREDICATE_TYPE:
        raise SignatureError(f"{where}: predicateType {kind!r}; expected {PREDICATE_TYPE!r}")
    subjects = _field(statement, "subject", list, f"{where}: statement")
    if len(subjects) != 1:
        raise SignatureError(f"{where}: expected one subject, found {len(subjects)}")
    digest = _field(subjects[0], "digest", dict, f"{where}: subject")
    predicate = _field(statement, "predicate", dict, f"{where}: statement")
    serialization = _field(predicate, "serialization", dict, f"{where}: predicate")
    method, hash_type = serialization.get("method"), serialization.get("hash_type")
    if (method, hash_type) != ("files", "sha256"):
        raise SignatureError(
            f"{where}: serialization method {method!r} with hash {hash_type!r}; edge_runtime "
            "verifies per-file sha256 signatures (model_signing's default; not --shard or "
            "blake2/blake3)"
        )
    resources = _field(predicate, "resources", list, f"{where}: predicate")
    files: dict[str, str] = {}
    for i, resource in enumerate(resources):
        at = f"{where}: resources[{i}]"
        name = _field(resource, "name", str, at)
        value = _field(resource, "digest", str, at)
        if resource.get("algorithm") != "sha256":
            raise SignatureError(f"{at} ({name}): algorithm {resource.get('algorithm')!r}")
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise SignatureError(f"{at} ({name}): digest is not a hex sha256")
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts or str(pure) != name:
            raise SignatureError(f"{at}: path {name!r} is not a normalized relative path")
        if name in files:
            raise SignatureError(f"{at}: {name} is listed twice")
        files[name] = value
    if digest.get("sha256") != root_digest(resources):
        raise SignatureError(
            f"{where}: the subject's sha256 does not match the listed file digests (statement "
            "built wrongly)"
        )
    return files


def _named_key(bundle: dict, where: str) -> tuple[str, str] | None:
    """(field, key hint) of the key the bundle's unsigned material names as its signer, or None.

    1.1.x writes publicKey.hint (hex sha256 of the key's PEM); 1.0.x wrote publicKey.rawBytes
    (base64 of the PEM itself), whose hint we compute from the key it holds."""
    material = bundle.get("verificationMaterial")
    public_key = material.get("publicKey") if isinstance(material, dict) else None
    if not isinstance(public_key, dict):
        return None
    hint = public_key.get("hint")
    if isinstance(hint, str) and hint:
        return "hint", hint
    raw = public_key.get("rawBytes")
    if not (isinstance(raw, str) and raw):
        return None
    exceptions, _, serialization, _ = _crypto()
    try:
        key = serialization.load_pem_public_key(_b64(raw, f"{where}: publicKey.rawBytes"))
    except (ValueError, exceptions.UnsupportedAlgorithm):  # not a key, or one of no known type
        raise SignatureError(
            f"{where}: verificationMaterial.publicKey.rawBytes is not a PEM public key this "
            "device can use: model.sig was edited"
        ) from None
    return "rawBytes", key_hint(key)


def verify_directory(root: Path, trusted_keys: Sequence[KeySource]) -> VerifiedSignature:
    """Check `root/model.sig` against `trusted_keys` and every file of `root` against it.

    Raises SignatureError naming what failed: no signature, a key no trusted key matches, an
    edited bundle, or each file that was modified, added or removed since signing.
    """
    root = Path(root)
    if isinstance(trusted_keys, (str, bytes, os.PathLike)):
        raise SignatureError(
            "trusted_keys must be a list of keys (paths or PEM bytes), not a single "
            f"{type(trusted_keys).__name__}: pass [{trusted_keys!r}]"
        )
    if not trusted_keys:
        raise SignatureError(
            "trusted_keys is empty: every signature would be refused. Give the public key(s) "
            "whose signatures this device accepts, or trusted_keys=None to skip the check"
        )
    keys = [_load_trusted_key(source, i) for i, source in enumerate(trusted_keys)]
    if not root.is_dir():
        raise SignatureError(f"{root} is not a directory (expected a signed artifact directory)")
    sig_path = root / SIGNATURE_NAME
    if sig_path.is_symlink():
        raise SignatureError(f"{sig_path} is a symbolic link; the signature must be a file")
    if sig_path.is_dir():
        raise SignatureError(
            f"{sig_path} is a directory; the signature must be a file (a Sigstore bundle)"
        )
    if not sig_path.is_file():
        if os.path.lexists(sig_path):  # a FIFO or socket: there, but no signature
            raise SignatureError(
                f"{sig_path} is not a regular file (a pipe, socket or device?); the signature must "
                "be a file (a Sigstore bundle): get a fresh copy of the signed directory"
            )
        raise SignatureError(
            f"{root} is not signed (no {SIGNATURE_NAME}) and trusted keys were given, so it is "
            "refused. Sign it where it was converted: `edge-sign sign DIR --key KEY.pem` (or convert "
            "with `edge-convert --sign-key KEY.pem`, or `model_signing sign key`), or load with "
            "trusted_keys=None to accept unsigned artifacts"
        )

    exceptions, _, _, ec = _crypto()
    bundle, payload_type, payload, signatures = _read_bundle(sig_path)
    message = pae(payload_type, payload)
    named = _named_key(bundle, str(sig_path))
    hint = named[1] if named else None
    verified = None
    for label, key in keys:
        for sig in signatures:
            try:
                key.verify(sig, message, ec.ECDSA(ecdsa_hash(key.curve.name)))
            except exceptions.InvalidSignature:
                continue
            verified = (label, key)
            break
        if verified:
            break
    if verified is None:
        tried = "; ".join(f"{label} (hint {key_hint(key)[:16]}…)" for label, key in keys)
        same = [label for label, key in keys if hint and key_hint(key) == hint]
        if same:  # made by a trusted key, but it no longer verifies: the bundle was damaged
            raise SignatureError(
                f"{sig_path}: the signature by {same[0]} (the key this bundle names) does not verify: "
                "model.sig was corrupted or edited. Get a fresh copy of the signed directory, or "
                "re-sign it where it was converted (edge-sign sign DIR --key KEY.pem)"
            )
        signer = f"names key hint {hint[:16]}… as its signer" if hint else "names no signer"
        raise SignatureError(
            f"{sig_path}: no trusted key verifies this signature. The bundle {signer}; it was "
            f"checked against {tried}. Either the artifact was re-signed by another key, or "
            "model.sig was edited. Add the signer's public key to trusted_keys only if you "
            "trust it (`edge-sign hint KEY.pub` prints a key file's hint)."
        )
    label, key = verified
    verified_hint = key_hint(key)
    if named and hint != verified_hint:
        if named[0] == "hint":
            what = f"hint {hint[:16]}… is not the hint of"
            also = " (model_signing 1.1 refuses it too)"
        else:
            what, also = f"rawBytes is another key (hint {hint[:16]}…) than", ""
        raise SignatureError(
            f"{sig_path}: verificationMaterial.publicKey.{what} {label} ({verified_hint[:16]}…), "
            f"whose signature verifies: model.sig was edited{also}"
        )

    signed = _statement_resources(payload, str(sig_path))
    problems, checked = check_files(root, signed)
    if problems:
        if problems.kinds() == {"unreadable"}:  # nothing seen changed: say what to fix
            head = f"cannot be checked against its signature (by {label}): files cannot be read"
            advice = "Make them readable by this user, or load as their owner"
        else:
            head = f"does not match its signature (by {label}); it was changed after signing"
            advice = ("Restore it from the signed original; if the change is yours, re-sign it "
                      "where it was converted (edge-sign sign DIR --key KEY.pem)")
        raise SignatureError(f"{root} {head}:\n  {problems.text()}\n{advice}")
    warn_if_writable(root)
    return VerifiedSignature(key=label, key_hint=verified_hint, files=len(signed), checked=checked)
