"""Open a dictionary folder of any layout we read, with what its config says about it.

Layouts: ours and SAELens's (``cfg.json`` + ``sae_weights.safetensors``, ``sae/io.py``) and
sparsify's (``cfg.json`` + ``sae.safetensors``, ``sae/sparsify.py``). The hook point comes from the
config where it says (SAELens ≥ 6: ``metadata.hook_name``; older: ``hook_name``), or from a
sparsify folder's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from monosemantic.errors import UserError
from monosemantic.sae import io, sparsify
from monosemantic.sae.base import SparseAutoencoder


@dataclass(frozen=True)
class Dictionary:
    """A loaded SAE and where it came from: ``layout`` is monosemantic, saelens or sparsify;
    ``architecture`` is the name its own config gives it; ``hook_name`` is None when unsaid."""

    sae: SparseAutoencoder
    path: Path
    layout: str
    architecture: str
    hook_name: str | None

    @property
    def foreign(self) -> bool:
        return self.layout != "monosemantic"


def open_dictionary(folder: str | Path, device: str = "cpu") -> Dictionary:
    """Load the SAE in ``folder`` whatever its layout; ``UserError`` when it is none we read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"SAE folder {folder}: not found")
    if sparsify.is_sparsify_folder(folder):
        sae = sparsify.load_sparsify(folder, device)
        return Dictionary(sae, folder, "sparsify", "topk", sparsify.transformer_lens_hook(folder.name))
    if not (folder / io.WEIGHTS_FILENAME).is_file():
        raise UserError(
            f"SAE folder {folder}: neither SAELens's layout ({io.CFG_FILENAME} + {io.WEIGHTS_FILENAME}) "
            f"nor sparsify's ({sparsify.CFG_FILENAME} + {sparsify.WEIGHTS_FILENAME})"
        )
    sae = io.load_sae(folder, device)  # validates cfg.json first
    raw = json.loads((folder / io.CFG_FILENAME).read_text())
    metadata = raw.get("metadata") or {}
    hook = metadata.get("hook_name") or raw.get("hook_name")
    layout = "monosemantic" if "monosemantic" in metadata else "saelens"
    return Dictionary(sae, folder, layout, str(raw.get("architecture", "standard")), hook)
