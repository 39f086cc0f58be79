"""Preference data: sources read into tables, registered data formats, image transforms, the latent cache."""

from diffalign.data.errors import DataError, SkipReport
from diffalign.data.examples import ImageOptions, collate_examples
from diffalign.data.formats import DataFormat, get_format, register_format, registered_formats
from diffalign.data.tables import Table, read_table
from diffalign.data.text_examples import TextOptions

__all__ = ["DataError", "DataFormat", "ImageOptions", "SkipReport", "Table", "TextOptions", "collate_examples",
           "get_format", "read_table", "register_format", "registered_formats"]
