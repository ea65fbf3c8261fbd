"""The folder layout of the public Gemma Scope release, read and written.

A release repository (e.g. ``gemma-scope-2b-pt-res``) holds one `params.npz` per SAE at
``layer_<L>/width_<W>/average_l0_<K>/params.npz``: W the width in Gemma Scope's short form
("16k" for 16,384, "65k", "131k", "1m"), K the SAE's average L0 rounded to an integer.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from raysae import storage
from raysae.sae.formats import NPZ_NAME, SAEFormatError, load_npz, save_npz
from raysae.sae.params import SAEParams


class ReleaseEntry(NamedTuple):
    layer: int
    width: str          # the folder's short form, "16k"
    average_l0: int
    url: str            # the params.npz


def width_name(width: int) -> str:
    """Gemma Scope's short form of a width: 16384 -> "16k", 65536 -> "65k", 1048576 -> "1m"
    (widths below 1,000, which the release has none of, as they are: "64")."""
    if width < 1000:
        return str(width)
    return f"{width // 10**6}m" if width >= 10**6 else f"{width // 1000}k"


def release_dir(root: str, layer: int, width: int, average_l0: float) -> str:
    """``<root>/layer_<L>/width_<W>/average_l0_<K>``."""
    return storage.join(root, f"layer_{layer}", f"width_{width_name(width)}",
                        f"average_l0_{int(round(average_l0))}")


def save_release(params: SAEParams, root: str, layer: int, average_l0: float) -> str:
    """Write a folded SAE where the release layout puts it; returns its params.npz URL."""
    return save_npz(params, release_dir(root, layer, params.width, average_l0))


def list_release(root: str) -> list[ReleaseEntry]:
    """Every SAE under a release root, sorted by layer, width and L0."""
    out = []
    for layer_dir in storage.listdir(root):
        m = re.fullmatch(r"layer_(\d+)", layer_dir)
        if not m:
            continue
        for width_dir in storage.listdir(storage.join(root, layer_dir)):
            w = re.fullmatch(r"width_(\d+[km]?)", width_dir)
            if not w:
                continue
            for l0_dir in storage.listdir(storage.join(root, layer_dir, width_dir)):
                k = re.fullmatch(r"average_l0_(\d+)", l0_dir)
                url = storage.join(root, layer_dir, width_dir, l0_dir, NPZ_NAME)
                if k and storage.exists(url):
                    out.append(ReleaseEntry(int(m.group(1)), w.group(1), int(k.group(1)), url))
    scale = {"k": 1000, "m": 10**6}
    return sorted(out, key=lambda e: (e.layer, int(e.width.rstrip("km")) * scale.get(e.width[-1], 1),
                                      e.average_l0))


def load_release(root: str, layer: int, width: int, average_l0: int | None = None) -> SAEParams:
    """The SAE at (layer, width[, average L0]) of a release root.

    Raises:
        SAEFormatError naming what is there when the SAE is missing, or when `average_l0` is
        not given and the width holds several.
    """
    name = width_name(width)
    found = [e for e in list_release(root) if e.layer == layer and e.width == name]
    if average_l0 is not None:
        found = [e for e in found if e.average_l0 == int(average_l0)]
    where = storage.join(root, f"layer_{layer}", f"width_{name}")
    if len(found) > 1:
        have = ", ".join(f"average_l0_{e.average_l0}" for e in found)
        raise SAEFormatError(f"{where}: several SAEs ({have}); give average_l0")
    if not found:
        raise SAEFormatError(f"{where}: no SAE" + (f" with average_l0_{average_l0}"
                                                  if average_l0 is not None else ""))
    return load_npz(found[0].url)
