"""Batched training-time augmentation of image tensors, reproducible on any device and rank count.

An augmentation is a function ``(images, generator) -> images`` on a whole batch ``(B, C, H, W)`` (uint8 pixels
or float), on whatever device the batch lives. Every random number comes from the given *CPU*
``torch.Generator`` and is only then moved to the batch's device, so a batch is augmented identically on CPU and
GPU and whichever rank trains the client (the local loop gives each (round, client) its own generator from the
named stream "augment"; see :mod:`fedmrn_mpi.training.local`).

Names (``AUGMENTATIONS``, the config's choices):
  - ``"none"``: no augmentation;
  - ``"crop_flip"``: :func:`crop_flip`, torchvision's ``RandomCrop(H, padding=4)`` then
    ``RandomHorizontalFlip(0.5)``, as the FedMRN reference experiments train CIFAR-10/100;
  - ``"auto"``: the reference choice of the dataset (:data:`REFERENCE`), resolved by :func:`resolve`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["AUGMENTATIONS", "REFERENCE", "Augment", "crop_flip", "make_augment", "resolve"]

#: ``(images, generator) -> augmented images``, same shape, dtype and device.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

AUGMENTATIONS: tuple[str, ...] = ("auto", "none", "crop_flip")

#: The training augmentation of the FedMRN reference experiments, per dataset; datasets absent here train
#: without augmentation.
REFERENCE: dict[str, str] = {"cifar10": "crop_flip", "cifar100": "crop_flip"}


def resolve(setting: str, dataset: str) -> str:
    """The concrete augmentation for config value `setting` on `dataset` (its registry name): "auto" becomes
    the dataset's reference augmentation ("none" when it has none); other known names are returned unchanged."""
    if setting not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {setting!r}; allowed: {', '.join(AUGMENTATIONS)}")
    if setting == "auto":
        return REFERENCE.get(dataset, "none")
    return setting


def crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4,
              flip_p: float = 0.5) -> torch.Tensor:
    """Random crop of the zero-padded image back to its size, then a random horizontal flip, per image.

    Equivalent in distribution to torchvision's ``RandomCrop((H, W), padding=padding)`` (constant fill 0)
    followed by ``RandomHorizontalFlip(flip_p)``, applied image by image. The fill is 0 in the input's units:
    a black pixel for uint8 input (apply this before normalisation, as the reference pipeline does), 0 for
    float input.

    Reproducibility contract: exactly two draws from `generator` (a CPU generator), in this order,
    whatever `flip_p` and the device:
      1. ``torch.randint(0, 2 * padding + 1, (B, 2))``: per image the crop's (top, left) offset in the padded
         image;
      2. ``torch.rand(B)``: image b is flipped when its value is ``< flip_p``.
    Changing the order, shapes or kinds of these draws changes every augmented batch.
    """
    if images.ndim != 4:
        raise ValueError(f"crop_flip expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator)
    flips = torch.rand(b, generator=generator) < flip_p
    device = images.device
    offsets, flips = offsets.to(device), flips.to(device)

    padded = F.pad(images, (padding, padding, padding, padding))  # constant 0, keeps the dtype
    rows = offsets[:, 0:1] + torch.arange(h, device=device)       # (B, H) rows of the padded image
    cols = offsets[:, 1:2] + torch.arange(w, device=device)       # (B, W)
    # The flip is folded into the gather: a flipped image reads its crop's columns right to left, which saves
    # a second pass over the pixels.
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    # One gather of flat pixel indices, shared by the channels (expand: no copy); on CPU this is ~5x faster
    # than indexing with four broadcast index tensors.
    flat = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    hw_padded = (h + 2 * padding) * (w + 2 * padding)
    return padded.reshape(b, c, hw_padded).gather(2, flat).reshape(b, c, h, w)


def make_augment(name: str) -> Augment | None:
    """The augmentation function called `name` (already resolved, see :func:`resolve`); None for "none"."""
    if name == "none":
        return None
    if name == "crop_flip":
        return crop_flip
    if name == "auto":
        raise ValueError('augmentation "auto" depends on the dataset: resolve(setting, dataset) it first')
    raise ValueError(f"unknown augmentation {name!r}; allowed: {', '.join(AUGMENTATIONS)}")
