"""What an activated bundle means for the documents index.

A bundle that ships a prebuilt index (``index/documents.db``, made by `phibox export --docs`) is
merged into the device's database (its manuals replace those of the same source; the device's own
stay). A bundle whose embedder differs from the one that made the device's vectors needs
them rebuilt: ``index_action`` says which, and the running device does it through ``Documents``
(a re-embed runs in a copy, so keyword search keeps answering meanwhile).
"""

from __future__ import annotations

from pathlib import Path

from phibox.device.documents import Documents
from phibox.device.installed import InstalledBundle
from phibox.device.rag.embedder import EmbedderSpec

PREBUILT_INDEX = Path("index") / "documents.db"


def prebuilt_index(bundle: InstalledBundle) -> Path | None:
    """The bundle's prebuilt documents database, if it ships one."""
    path = bundle.root / PREBUILT_INDEX
    return path if path.is_file() else None


def index_action(documents: Documents, bundle: InstalledBundle, spec: EmbedderSpec) -> str | None:
    """'adopt' (merge the bundle's prebuilt index into the database), 'reembed' (the vectors come from
    another embedder), or None (nothing to do)."""
    if prebuilt_index(bundle) is not None:
        return "adopt"
    current = documents.embedder_id()
    if current is not None and current != (spec.id, spec.dim):
        return "reembed"
    return None
