"""The checked inputs of a diagnosis: the checkpoints loaded into the chosen model, and the
dataset fed to it as vfcore feeds every model (`vfcore.evaluation.input_batches`)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DatasetError, ImageSet, dataset_shape, load_dataset
from ..device import limit_threads, resolve_device
from ..evaluation import input_batches, is_cnn
from ..merge import check_states
from .checkpoints import load_into, read_checkpoint, saved_config
from .choice import ModelChoice, build, place
from .errors import BadInput

BATCH = 250


def _on_canvas(data: ImageSet, size: int) -> ImageSet:
    """`data` with its images centred on a zero canvas of `size`, as `vfcore.data.batches` pads
    them, for a model of one's own: it records no input size for `input_batches` to pad to."""
    height, width = data.images.shape[-2:]
    top, left = (size - height) // 2, (size - width) // 2
    images = F.pad(data.images, (left, size - width - left, top, size - height - top))
    return dataclasses.replace(data, images=images)


@dataclass
class Inputs:
    """Checked inputs: the loaded models (eval mode, on `device`) and their dataset.

    `canvas` is the `--image-size` a model of one's own takes when it is larger than the
    dataset's images (None otherwise); built-in models pad as their configuration says.
    """

    models: list[nn.Module]
    paths: list[Path]
    description: str
    data: str
    canvas: int | None
    device: torch.device
    _sets: dict[bool, ImageSet] = field(default_factory=dict, repr=False)

    def dataset(self, train: bool) -> ImageSet:
        """One split of the dataset (loaded once); a missing dataset is a `BadInput`."""
        if train not in self._sets:
            try:
                data = load_dataset(self.data, train=train)
            except DatasetError as err:
                raise BadInput(str(err)) from err
            self._sets[train] = data if self.canvas is None else _on_canvas(data, self.canvas)
        return self._sets[train]

    def load_data(self) -> None:
        """Load both splits now, so that a missing dataset stops the run before any work."""
        self.dataset(True)
        self.dataset(False)

    def draw(self, n: int, *, train: bool, seed: int = 0, augment: bool = False
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first n images of the split (shuffled by `seed` for the training split) and their
        labels, shaped for the models and on their device; CNNs get the training augmentation
        if asked."""
        data = self.dataset(train)
        model = self.models[0]
        return list(input_batches(model, data, BATCH, augment=augment and is_cnn(model),
                                  shuffle=train, seed=seed, limit=min(n, len(data)),
                                  device=self.device))


def prepare(paths: list[str | os.PathLike], choice: ModelChoice, data: str,
            device: str | None = None) -> Inputs:
    """Load the checkpoints into the chosen model and check that it fits the dataset's images
    and can be traced; every problem is a `BadInput`. Nothing heavy runs and nothing is written.

    A built-in model is built for the dataset (its channels and classes) unless told otherwise;
    CNNs see images zero-padded to 32x32 (or `image_size`), as vfcore trains them.
    """
    limit_threads()
    try:
        target = resolve_device(device)
        native = dataset_shape(data)[1]
    except ValueError as err:
        raise BadInput(str(err)) from err
    files = [Path(p) for p in paths]
    loaded = [read_checkpoint(p) for p in files]
    for path, (state, _) in zip(files[1:], loaded[1:], strict=True):
        try:
            check_states(loaded[0][0], state)
        except ValueError as err:
            raise BadInput(f"{files[0]} and {path} hold different architectures: {err}") from err
    template, description, image_size = build(choice, data,
                                              saved_config(loaded[0][1], choice.name))
    template = place(template, description, data, image_size, target)
    models = [load_into(template, state, path, description, choice.builtin)
              for path, (state, _) in zip(files, loaded, strict=True)]
    canvas = None if choice.builtin or image_size == native else image_size
    return Inputs(models, files, description, data, canvas, target)
