"""An unpacked bundle folder as the device uses it: where its model files and embedder lie.

Installation (``bundles/<version>/`` under the state directory, with ``current`` pointing at the
active one) verifies signatures and hashes; this module only reads what is there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phibox.device import paths
from phibox.device.bundle import MANIFEST, Manifest
from phibox.device.errors import ConfigError

DOCUMENTS_DB = "documents.db"


@dataclass(frozen=True)
class InstalledBundle:
    root: Path
    manifest: Manifest

    @classmethod
    def open(cls, root: Path) -> InstalledBundle:
        if not (root / MANIFEST).is_file():
            raise ConfigError(f"{root} is not an unpacked phibox bundle (no {MANIFEST}); pass --bundle DIR")
        return cls(root, Manifest.from_bytes((root / MANIFEST).read_bytes()))

    @property
    def embedder_dir(self) -> Path:
        folder = self.root / "embedder"
        if not (folder / "model.onnx").is_file():
            raise ConfigError(f"{self.root} has no embedder/model.onnx: export the bundle with its embedder")
        return folder

    def gguf_path(self) -> Path:
        files = [f.path for f in self.manifest.files if f.role == "gguf"]
        if not files:
            raise ConfigError(f"bundle {self.manifest.name} v{self.manifest.version} has no GGUF model")
        return self.root / files[0]

    def onnx_dir(self) -> Path:
        if "onnx" not in self.manifest.formats or not (self.root / "onnx" / "genai_config.json").is_file():
            raise ConfigError(f"bundle {self.manifest.name} v{self.manifest.version} has no ONNX model")
        return self.root / "onnx"


def default_bundle_dir() -> Path:
    """The active bundle: <state>/current."""
    current = paths.state_dir() / "current"
    if not current.exists():
        raise ConfigError(f"no active bundle at {current}: install one, or pass --bundle DIR")
    return current


def default_db_path() -> Path:
    return paths.state_dir() / DOCUMENTS_DB
