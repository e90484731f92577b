"""The teacher's image embeddings, computed once per image and read from disk afterwards (MobileSAM
saves SAM-ViT-H's embeddings before distilling: the teacher is 632 M parameters).

A store is a folder ``<SAM.EMBEDDING_DIR>/<digest>/`` of one float16 file per image, named by the
image's key (its JSON path relative to the data root). The digest (16 hex digits of a SHA-256) covers
what the embeddings depend on: the teacher's name and weights (the fingerprint of
:func:`mdistiller.distillers.frequency_prompts.teacher_fingerprint`), the input size and the data
(the root's absolute path and every key with the size of its JSON file: a stat per image, no read,
as SA-1B has 11 M of them). Another teacher, input size or data set gives another folder, never a
stale embedding. :meth:`EmbeddingStore.fill` writes
the missing files (each atomically: a temporary file, then a rename; under torchrun each process
its shard of the loader); :meth:`EmbeddingStore.read` loads a batch of them.
"""

import hashlib
import json
import os
import tempfile
from typing import Callable, Sequence

import torch
from torch import Tensor

from mdistiller.errors import ConfigError

__all__ = ["EmbeddingStore", "store_digest"]


def store_digest(teacher: str, fingerprint: float, image_size: int, root: str, files: Sequence[str]) -> str:
    """The digest naming a store (module docstring): teacher, weights, input size, data."""
    data = [[os.path.relpath(path, root), os.path.getsize(path)] for path in files]
    record = {"teacher": teacher, "fingerprint": f"{fingerprint:.10e}", "image_size": image_size,
              "root": os.path.abspath(root), "data": data}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


class EmbeddingStore:
    """The teacher embeddings of one data set (module docstring)."""

    def __init__(self, base: str, digest: str) -> None:
        self.directory = os.path.join(base, digest)
        os.makedirs(self.directory, exist_ok=True)

    def path(self, key: str) -> str:
        return os.path.join(self.directory, os.path.splitext(key)[0].replace(os.sep, "__") + ".pt")

    def missing(self, keys: Sequence[str]) -> list:
        return [key for key in keys if not os.path.isfile(self.path(key))]

    def write(self, key: str, embedding: Tensor) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=self.directory)
        with os.fdopen(fd, "wb") as f:
            torch.save(embedding.detach().to("cpu", torch.float16).clone(), f)
        os.replace(tmp, self.path(key))

    @torch.no_grad()
    def fill(self, loader, encode: Callable[[Tensor, Tensor], Tensor], device: torch.device) -> int:
        """Compute and write the embeddings of the loader's images that are not stored yet, with
        ``encode(images, sizes)``; returns how many were written."""
        written = 0
        for images, targets in loader:
            keys = [t["key"] for t in targets]
            missing = set(self.missing(keys))
            todo = [i for i, key in enumerate(keys) if key in missing]
            if not todo:
                continue
            sizes = torch.stack([targets[i]["size"] for i in todo]).to(device)
            embeddings = encode(images[todo].to(device), sizes)
            for i, embedding in zip(todo, embeddings):
                self.write(keys[i], embedding)
                written += 1
        return written

    def read(self, keys: Sequence[str], device: torch.device) -> Tensor:
        """(B, 256, h, w) float32 embeddings of `keys`; ConfigError naming the first one missing."""
        absent = self.missing(keys)
        if absent:
            raise ConfigError(f"No teacher embedding for {absent[0]} in {self.directory}: the store was filled "
                              "for other data; delete the folder or rerun stage 1 to fill it.")
        return torch.stack([torch.load(self.path(key), map_location="cpu", weights_only=True)
                            for key in keys]).to(device, torch.float32)
