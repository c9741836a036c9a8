"""The bundle contract: manifest schema, canonical bytes, Ed25519 signatures and verification.

A bundle is a folder (or a tar of one) holding ``manifest.json``, ``manifest.sig`` and exactly
the files the manifest lists. The signature covers the exact manifest bytes; the manifest covers
every file's size and sha256. Standard library + ``cryptography`` only: export/ and train/ import
this module, the device trusts it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from phibox.device.errors import BundleError, KeyFileError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
ROLES = ("gguf", "onnx", "embedder", "tokenizer", "index", "eval", "config", "other")
FORMATS = ("gguf", "onnx")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    """One file of a bundle: its path inside the bundle, what it is for, its size and sha256."""

    path: str
    role: str
    size: int
    sha256: str

    def __post_init__(self) -> None:
        check_member_path(self.path)
        if self.role not in ROLES:
            raise BundleError(f"file {self.path}: role {self.role!r} is not one of {ROLES}")
        if self.size < 0 or len(self.sha256) != 64:
            raise BundleError(f"file {self.path}: size or sha256 is malformed in the manifest")


@dataclass(frozen=True)
class Embedder:
    """The sentence embedder a bundle ships; a documents index is tied to its id and dimension."""

    id: str
    dim: int


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds and how it was made. Serialized as canonical JSON and signed."""

    name: str
    version: int
    """Monotonic integer: a device refuses a version at or below its active one."""
    created_at: str
    """UTC time in ISO 8601, e.g. 2026-11-21T10:00:00Z."""
    min_device_version: str
    """Oldest phibox that can run this bundle, e.g. "0.1.0"."""
    base_model: str
    files: tuple[FileEntry, ...]
    formats: tuple[str, ...]
    embedder: Embedder | None
    stop_tokens: tuple[str, ...]
    chat_template: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Training and export facts: data hash, hyperparameters, code revision, quantization."""
    parity: dict[str, Any] = field(default_factory=dict)
    """Summary of the parity gate per format."""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema {self.schema_version} is not {SCHEMA_VERSION}: "
                "export the bundle again with this phibox version"
            )
        if not self.name or not isinstance(self.version, int) or self.version < 1:
            raise BundleError("manifest needs a name and an integer version of 1 or more")
        unknown = set(self.formats) - set(FORMATS)
        if unknown:
            raise BundleError(f"manifest lists unknown formats {sorted(unknown)}")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise BundleError("manifest lists the same file twice")
        if any(p in (MANIFEST, SIGNATURE) for p in paths):
            raise BundleError("manifest must not list manifest.json or manifest.sig")

    def to_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, no spaces, UTF-8. The signature covers exactly these."""
        return canonical_json(asdict(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse manifest bytes (after their signature was checked)."""
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{MANIFEST} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise BundleError(f"{MANIFEST} must hold a JSON object")
        try:
            files = tuple(FileEntry(**f) for f in raw.pop("files"))
            emb = raw.pop("embedder")
            return cls(
                files=files,
                embedder=Embedder(**emb) if emb else None,
                formats=tuple(raw.pop("formats")),
                stop_tokens=tuple(raw.pop("stop_tokens")),
                **raw,
            )
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{MANIFEST} does not match schema {SCHEMA_VERSION}: {exc}") from exc


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes for signing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_member_path(path: str) -> PurePosixPath:
    """Reject paths that could escape the bundle folder: absolute, '..', backslashes, empty."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or "\\" in path or any(part in ("", ".", "..") for part in p.parts):
        raise BundleError(f"bundle member {path!r} is not a plain relative path: rejecting the bundle")
    if path != p.as_posix():
        raise BundleError(f"bundle member {path!r} is not in normal form: rejecting the bundle")
    return p


def sha256_file(path: Path) -> tuple[int, str]:
    """Size and sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def file_entry(root: Path, rel: str, role: str) -> FileEntry:
    """Hash ``root/rel`` into a manifest entry."""
    size, digest = sha256_file(root / rel)
    return FileEntry(path=rel, role=role, size=size, sha256=digest)


# --- keys -------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key: the first 16 hex digits of sha256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(private_path: Path) -> tuple[Path, str]:
    """Write a new Ed25519 private key (mode 0600) and its public key beside it (``.pub``).

    Returns the public key path and its key id. Refuses to overwrite an existing key.
    """
    public_path = private_path.with_suffix(".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise KeyFileError(f"{p} already exists: choose another --out or move the old key away")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public_path, key_id(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key written by ``generate_key``."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a readable private key ({exc}); make one with `phibox keygen`") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key; make one with `phibox keygen`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key (the ``.pub`` file ``phibox keygen`` writes)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyFileError(
            f"{path}: not a readable public key ({exc}); use the .pub file from `phibox keygen`"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return key


def load_trusted_keys(paths: Iterable[Path]) -> list[Ed25519PublicKey]:
    """Public keys from files and folders (every ``*.pub`` in a folder). At least one is needed."""
    keys: list[Ed25519PublicKey] = []
    for p in paths:
        files = sorted(p.glob("*.pub")) if p.is_dir() else [p]
        keys.extend(load_public_key(f) for f in files)
    if not keys:
        raise KeyFileError("no trusted public keys found: add the admin's .pub file to the device's keys")
    return keys


# --- signing and verification ----------------------------------------------------------------


def sign_manifest(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The contents of manifest.sig for these exact manifest bytes."""
    sig = {
        "alg": "ed25519",
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(manifest_bytes)).decode(),
    }
    return canonical_json(sig)


def write_signed_manifest(bundle_dir: Path, manifest: Manifest, key: Ed25519PrivateKey) -> None:
    """Write manifest.json and manifest.sig into a bundle folder."""
    data = manifest.to_bytes()
    (bundle_dir / MANIFEST).write_bytes(data)
    (bundle_dir / SIGNATURE).write_bytes(sign_manifest(data, key))


def verify_signature(
    manifest_bytes: bytes, sig_bytes: bytes, trusted: Sequence[Ed25519PublicKey], what: str = MANIFEST
) -> str:
    """Check a signature (manifest.sig, or a channel's) against the trusted keys; returns the id of
    the key that signed. ``what`` names the signed file in error messages."""
    try:
        sig = json.loads(sig_bytes)
        if sig.get("alg") != "ed25519":
            raise BundleError(f"{SIGNATURE} uses algorithm {sig.get('alg')!r}, phibox expects ed25519")
        signature = base64.b64decode(sig["signature"], validate=True)
        claimed = str(sig.get("key_id", "?"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{SIGNATURE} is malformed ({exc}): sign the bundle again with `phibox export`") from exc
    for key in trusted:
        try:
            key.verify(signature, manifest_bytes)
            return key_id(key)
        except InvalidSignature:
            continue
    trusted_ids = ", ".join(key_id(k) for k in trusted)
    raise BundleError(
        f"{what} does not verify with any trusted key: it claims key {claimed}, the device "
        f"trusts {trusted_ids}. Was it signed with the admin key from `phibox keygen`, and was "
        f"{what} left unchanged?"
    )


def verify(bundle_dir: Path, trusted: Sequence[Ed25519PublicKey]) -> Manifest:
    """Verify an unpacked bundle: signature first, then every file's size and sha256.

    Rejects missing files, unlisted files and anything that is not a regular file.
    """
    man_path, sig_path = bundle_dir / MANIFEST, bundle_dir / SIGNATURE
    if not man_path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST}; is this a phibox bundle?")
    if not sig_path.is_file():
        raise BundleError(f"{bundle_dir}: {MANIFEST} is unsigned (no {SIGNATURE}); refusing it")
    manifest_bytes = man_path.read_bytes()
    verify_signature(manifest_bytes, sig_path.read_bytes(), trusted)
    manifest = Manifest.from_bytes(manifest_bytes)
    listed = {f.path: f for f in manifest.files}
    present = _walk_members(bundle_dir)
    extra = sorted(set(present) - set(listed))
    if extra:
        raise BundleError(f"{bundle_dir}: {extra[0]} is not listed in the manifest; refusing the bundle")
    for entry in manifest.files:
        path = bundle_dir / entry.path
        if entry.path not in present:
            raise BundleError(f"{bundle_dir}: {entry.path} is listed in the manifest but missing")
        size, digest = sha256_file(path)
        if size != entry.size:
            raise BundleError(f"{entry.path}: {size} bytes, the manifest says {entry.size}; the file is damaged")
        if digest != entry.sha256:
            raise BundleError(f"{entry.path}: sha256 differs from the manifest; the file was altered or damaged")
    return manifest


def _walk_members(bundle_dir: Path) -> set[str]:
    """Relative paths of every member below bundle_dir except the manifest and its signature."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(bundle_dir, followlinks=False):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(bundle_dir).as_posix()
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise BundleError(f"{bundle_dir}: {rel} is not a regular file; refusing the bundle")
            if stat.S_ISREG(mode) and rel not in (MANIFEST, SIGNATURE):
                found.add(rel)
    return found


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.1.0' -> (0, 1, 0); for min_device_version checks."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError as exc:
        raise BundleError(f"version {version!r} is not dotted integers like 0.1.0") from exc
