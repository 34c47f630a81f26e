"""Training and validation data: image lists (``datasets``) and the grain pipeline."""
from jaxsr.data.datasets import (
    BUNDLED,
    bundled_photo_paths,
    image_size,
    read_rgb_uint8,
    resolve_image_paths,
)
from jaxsr.data.pipeline import (
    load_validation_set,
    make_train_dataset,
    restore_iterator_state,
    save_iterator_state,
    shard_paths,
)

__all__ = [
    "BUNDLED",
    "bundled_photo_paths",
    "image_size",
    "load_validation_set",
    "make_train_dataset",
    "read_rgb_uint8",
    "resolve_image_paths",
    "restore_iterator_state",
    "save_iterator_state",
    "shard_paths",
]
