"""Method plugins, registered by name on import (one module per method).

Add a method: one module with a ``@register_method`` class, one import line below, tests.
"""

from diffalign.methods import diffusion_dpo, inpo, mapo, sft, smpo, text  # noqa: F401
from diffalign.methods.base import Method, MethodConfig, get_method_class, register_method, registered_methods

__all__ = ["Method", "MethodConfig", "get_method_class", "register_method", "registered_methods"]
