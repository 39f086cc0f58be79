"""Method plugins, registered by name on import (one module per method).

Add a method: one module with a ``@register_method`` class, one import line below, tests.
"""

from diffalign.methods import diffusion_dpo, inpo, mapo, sft, smpo  # noqa: F401
from diffalign.methods import diffusion_npo  # noqa: F401
from diffalign.methods import self_npo  # noqa: F401
from diffalign.methods import tdpo, tkto, diffusion_kto  # noqa: F401
from diffalign.methods import ppd  # noqa: F401
from diffalign.methods import text_cpo  # noqa: F401
from diffalign.methods import text_dpo  # noqa: F401
from diffalign.methods import text_ipo  # noqa: F401
from diffalign.methods import text_kto  # noqa: F401
from diffalign.methods import text_lipo  # noqa: F401
from diffalign.methods import text_orpo  # noqa: F401
from diffalign.methods import text_rpo  # noqa: F401
from diffalign.methods import text_simpo  # noqa: F401
from diffalign.methods.base import Method, MethodConfig, get_method_class, register_method, registered_methods

__all__ = ["Method", "MethodConfig", "get_method_class", "register_method", "registered_methods"]
