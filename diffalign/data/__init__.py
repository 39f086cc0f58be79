"""Preference datasets: Pick-a-Pic v2 schema through ``datasets``, diffalign jsonl, image transforms."""

from diffalign.data.datasets import ChosenImageDataset, ImagePairDataset, collate_images
from diffalign.data.errors import DataError, SkipReport
from diffalign.data.sources import ImageRow, ImageSource, load_image_source

__all__ = ["ChosenImageDataset", "DataError", "ImagePairDataset", "ImageRow", "ImageSource", "SkipReport",
           "collate_images", "load_image_source"]
