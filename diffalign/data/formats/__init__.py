"""The built-in data formats, one module each, registered by name on import (``diffalign.data.registry``).

Add a format: one module here with a ``@register_format`` class (an ``ImageFormat`` or ``TextFormat``
subclass), its name in the import line below, tests, and its schema in the README.
"""

from diffalign.data.formats import (  # noqa: F401
    captioned_images, chosen_images, image_pairs, labelled_images, prompts, scored_image_pairs, text_pairs, text_ranked,
    text_unpaired, user_image_pairs,
)
