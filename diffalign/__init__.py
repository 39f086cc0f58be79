"""diffalign: preference alignment for text-to-image diffusion models and text LMs on one objective core."""

from diffalign._compat import torchvision_cpu as _torchvision_cpu

_torchvision_cpu.install()

__version__ = "0.1.0"
