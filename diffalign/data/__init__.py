"""Preference data: sources read into tables, registered data formats, image transforms, the latent cache."""

from diffalign.data.errors import DataError, SkipReport
from diffalign.data.examples import Example, ImageFormat, ImageOptions, collate_examples
from diffalign.data.registry import DataFormat, get_format, register_format, registered_formats
from diffalign.data.tables import Table, read_table
from diffalign.data.text_examples import TextFormat, TextOptions

__all__ = ["DataError", "DataFormat", "Example", "ImageFormat", "ImageOptions", "SkipReport", "Table", "TextFormat",
           "TextOptions", "collate_examples", "get_format", "read_table", "register_format", "registered_formats"]
