"""The bundle contract: signatures, per-file hashes, and the errors an admin reads."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from phibox.device import bundle
from phibox.device.errors import BundleError, KeyFileError


def make_bundle(root: Path, key_path: Path, version: int = 3) -> Path:
    """A small but complete bundle folder signed with key_path."""
    root.mkdir(parents=True)
    (root / "model").mkdir()
    (root / "model" / "phi3-q4_k_m.gguf").write_bytes(os.urandom(4096))
    (root / "eval").mkdir()
    (root / "eval" / "parity.json").write_text('{"gguf": {"top1": 0.99}}')
    entries = (
        bundle.file_entry(root, "model/phi3-q4_k_m.gguf", "gguf"),
        bundle.file_entry(root, "eval/parity.json", "eval"),
    )
    manifest = bundle.Manifest(
        name="plant7",
        version=version,
        created_at="2026-11-21T10:00:00Z",
        min_device_version="0.1.0",
        base_model="microsoft/Phi-3-mini-4k-instruct",
        files=entries,
        formats=("gguf",),
        embedder=bundle.Embedder(id="all-MiniLM-L6-v2", dim=384),
        stop_tokens=("<|end|>", "<|endoftext|>"),
        provenance={"data_sha256": "ab" * 32},
    )
    bundle.write_signed_manifest(root, manifest, bundle.load_private_key(key_path))
    return root


@pytest.fixture()
def admin_key(tmp_path: Path) -> Path:
    key = tmp_path / "keys" / "admin.key"
    key.parent.mkdir()
    bundle.generate_key(key)
    return key


@pytest.fixture()
def good(tmp_path: Path, admin_key: Path) -> Path:
    return make_bundle(tmp_path / "b", admin_key)


def trusted(key: Path) -> list:
    return bundle.load_trusted_keys([key.with_suffix(".pub")])


def test_good_bundle_verifies_and_round_trips(good: Path, admin_key: Path) -> None:
    manifest = bundle.verify(good, trusted(admin_key))
    assert manifest.version == 3
    assert manifest.embedder == bundle.Embedder("all-MiniLM-L6-v2", 384)
    assert [f.path for f in manifest.files] == ["model/phi3-q4_k_m.gguf", "eval/parity.json"]
    assert manifest.to_bytes() == (good / "manifest.json").read_bytes()


def test_flipped_byte_names_the_file(good: Path, admin_key: Path) -> None:
    target = good / "model" / "phi3-q4_k_m.gguf"
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model/phi3-q4_k_m\.gguf: sha256 differs"):
        bundle.verify(good, trusted(admin_key))


def test_truncated_file_names_the_file_and_sizes(good: Path, admin_key: Path) -> None:
    target = good / "eval" / "parity.json"
    target.write_bytes(target.read_bytes()[:-3])
    with pytest.raises(BundleError, match=r"eval/parity\.json: \d+ bytes, the manifest says \d+"):
        bundle.verify(good, trusted(admin_key))


def test_edited_manifest_fails_the_signature(good: Path, admin_key: Path) -> None:
    raw = json.loads((good / "manifest.json").read_bytes())
    raw["version"] = 99
    (good / "manifest.json").write_bytes(bundle.canonical_json(raw))
    with pytest.raises(BundleError, match="does not verify with any trusted key"):
        bundle.verify(good, trusted(admin_key))


def test_wrong_key_names_both_keys(good: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    _, other_id = bundle.generate_key(other)
    sig = json.loads((good / "manifest.sig").read_bytes())
    with pytest.raises(BundleError) as err:
        bundle.verify(good, trusted(other))
    assert sig["key_id"] in str(err.value) and other_id in str(err.value)


def test_missing_signature(good: Path, admin_key: Path) -> None:
    (good / "manifest.sig").unlink()
    with pytest.raises(BundleError, match="unsigned"):
        bundle.verify(good, trusted(admin_key))


def test_extra_file_is_named(good: Path, admin_key: Path) -> None:
    (good / "model" / "backdoor.so").write_bytes(b"\x7fELF")
    with pytest.raises(BundleError, match=r"model/backdoor\.so is not listed"):
        bundle.verify(good, trusted(admin_key))


def test_missing_file_is_named(good: Path, admin_key: Path) -> None:
    (good / "eval" / "parity.json").unlink()
    with pytest.raises(BundleError, match=r"eval/parity\.json is listed in the manifest but missing"):
        bundle.verify(good, trusted(admin_key))


def test_symlink_member_is_rejected(good: Path, admin_key: Path) -> None:
    (good / "eval" / "link").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="eval/link is not a regular file"):
        bundle.verify(good, trusted(admin_key))


@pytest.mark.parametrize("path", ["../evil", "/etc/passwd", "a/../../b", "a\\b", "", "./a", "a//b"])
def test_manifest_paths_that_escape_are_rejected(path: str) -> None:
    with pytest.raises(BundleError, match="rejecting the bundle"):
        bundle.FileEntry(path=path, role="other", size=1, sha256="0" * 64)


def test_schema_errors_are_bundle_errors() -> None:
    with pytest.raises(BundleError, match="not valid JSON"):
        bundle.Manifest.from_bytes(b"{nope")
    with pytest.raises(BundleError, match="does not match schema"):
        bundle.Manifest.from_bytes(b'{"name": "x"}')


def test_canonical_bytes_do_not_depend_on_key_order() -> None:
    assert bundle.canonical_json({"b": 1, "a": "é"}) == bundle.canonical_json({"a": "é", "b": 1})
    assert bundle.canonical_json({"a": "é"}) == '{"a":"é"}'.encode()


def test_rotation_any_trusted_key_verifies(good: Path, admin_key: Path, tmp_path: Path) -> None:
    keys_dir = tmp_path / "device-keys"
    keys_dir.mkdir()
    bundle.generate_key(tmp_path / "new.key")
    for pub in (admin_key.with_suffix(".pub"), tmp_path / "new.pub"):
        (keys_dir / pub.name).write_bytes(pub.read_bytes())
    assert bundle.verify(good, bundle.load_trusted_keys([keys_dir])).name == "plant7"


def test_keygen_writes_private_key_0600_and_never_overwrites(tmp_path: Path) -> None:
    key = tmp_path / "admin.key"
    result = subprocess.run(
        [sys.executable, "-m", "phibox.device.cli", "keygen", "--out", str(key)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "BEGIN PUBLIC KEY" in result.stdout and key.with_suffix(".pub").is_file()
    again = subprocess.run(
        [sys.executable, "-m", "phibox.device.cli", "keygen", "--out", str(key)], capture_output=True, text=True
    )
    assert again.returncode == 1 and "already exists" in again.stderr


def test_unreadable_keys_say_what_to_do(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    empty = tmp_path / "keys"
    empty.mkdir()
    with pytest.raises(KeyFileError, match="phibox keygen"):
        bundle.load_public_key(junk)
    with pytest.raises(KeyFileError, match="no trusted public keys"):
        bundle.load_trusted_keys([empty])
