"""Let torchvision's pure-Python parts import on a CPU-only torch wheel.

The torchvision 0.28.0 wheel that pairs with torch 2.13.0 is built against CUDA: its ``_C.so`` links
``libtorch_cuda.so``, which the CPU torch wheel does not ship. When ``_C.so`` fails to load,
``torchvision/_meta_registrations.py`` still registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` and raises "operator torchvision::nms does not exist", so ``import torchvision``
fails, and with it every transformers / diffusers / open_clip import that touches torchvision.

The fix declares those two operator schemas (without kernels) when, and only when, ``_C.so`` cannot be
loaded. The hook runs lazily at the first ``import torchvision``. On a CUDA build of torch the real
``_C.so`` loads, the hook declares nothing and torchvision is untouched. torchvision's compiled ops
(``nms``, ``roi_align``, image decoding) stay unavailable on the CPU wheel; diffalign does not use them.
See ``research/packaging.md`` §1 for the investigation.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_declared_library = None  # keeps the torch.library.Library alive for the process lifetime


class _TorchvisionCpuFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torchvision")
        if spec is not None and spec.submodule_search_locations:
            _declare_ops_if_kernels_missing(os.path.join(spec.submodule_search_locations[0], "_C.so"))
        return spec


def _declare_ops_if_kernels_missing(library_path: str) -> None:
    global _declared_library
    import torch

    try:
        torch.ops.load_library(library_path)
    except (OSError, RuntimeError):
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _declared_library = library


def install() -> None:
    """Install the import hook unless torchvision is already imported or the hook is in place."""
    if "torchvision" in sys.modules:
        return
    if any(isinstance(finder, _TorchvisionCpuFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionCpuFinder())
