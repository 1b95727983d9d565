"""Data sources (image folders, Fashion-MNIST, digits, arrays) turned into one ImageSet form."""

from replearn.data.imageset import ImageSet
from replearn.data.sources import data_names, has_split, load_data

__all__ = ["ImageSet", "data_names", "has_split", "load_data"]
