"""Dictionary transforms that load mammograms and labels in canonical orientation."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from mammolabel.data.view import infer_view, view_from_text
from mammolabel.io import Mammogram, canonicalise, read_label, read_mammogram, to_canonical


def with_view(image: Mammogram, hint: str | None = None) -> Mammogram:
    """``image`` (canonical) with ``meta["view"]`` and ``meta["view_source"]`` filled in."""
    if image.meta.get("view"):
        image.meta.setdefault("view_source", "header")
        return image
    name_view = view_from_text(Path(str(image.meta.get("path", ""))).name.split(".")[0])
    view, source = ((str(hint).upper(), "datastore") if hint else (name_view, "name") if name_view
                    else (infer_view(image.pixels), "pixels"))
    image.meta.update(view=view, view_source=source)
    return image


class LoadMammogramd(MapTransform):
    """Load the mammogram at ``d[key]`` as a canonical (1, rows, cols) float MetaTensor in [0, 1].

    Unlike MONAI's 2D readers this keeps (rows, cols) order. ``meta`` holds the reader's metadata
    plus ``flipped`` (True when the image was mirrored to put the chest wall on the left),
    ``chest_wall`` and ``original_shape``; outputs are mapped back with them. ``d["laterality"]``,
    when present (e.g. from the datastore's image info), is used as a hint. The view comes from the
    file, else ``d["view"]``, else the file name, else the pixels (:mod:`mammolabel.data.view`);
    ``meta["view_source"]`` says which (with ``find_view`` false the view is only the file's). Label
    keys listed in ``label_keys`` are read as uint8 masks of the same size and given the same flip.
    """

    def __init__(self, keys: KeysCollection, label_keys: KeysCollection = (), allow_missing_keys: bool = False,
                 find_view: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
        self.find_view = find_view

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = canonicalise(read_mammogram(str(d[key])), d.get("laterality"))
            if self.find_view:
                image = with_view(image, d.get("view"))
            meta = dict(image.meta, filename_or_obj=image.meta["path"])
            d[key] = MetaTensor(torch.from_numpy(image.pixels[None].copy()), meta=meta)
            for label_key in self.label_keys:
                if d.get(label_key):
                    mask = read_label(str(d[label_key]), image.shape)
                    d[label_key] = torch.from_numpy(to_canonical(mask, meta["flipped"])[None].astype(np.float32))
        return d
