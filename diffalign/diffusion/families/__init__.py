"""Model families by name and by ``model_index.json`` class (``base.ModelFamily``): adding a family is one
module with its adapter and one line here."""

from __future__ import annotations

from typing import Optional

from diffalign.diffusion.families.base import ModelFamily
from diffalign.diffusion.families.flow import TIMESTEP_DENSITIES, TimestepDensity
from diffalign.diffusion.families.flux import FluxFamily
from diffalign.diffusion.families.sd import SDFamily
from diffalign.diffusion.families.sd3 import SD3Family
from diffalign.diffusion.families.sdxl import SDXLFamily

FAMILIES: dict[str, type[ModelFamily]] = {family.name: family for family in (SDFamily, SDXLFamily, SD3Family, FluxFamily)}


def family_for_pipeline(class_name: Optional[str]) -> Optional[type[ModelFamily]]:
    """The family of a ``model_index.json`` ``_class_name`` (None if diffalign does not train it)."""
    return next((family for family in FAMILIES.values() if class_name in family.pipeline_class_names), None)


def trained_pipelines() -> list[str]:
    return [family.pipeline_class_names[0] for family in FAMILIES.values()]


__all__ = ["FAMILIES", "ModelFamily", "TIMESTEP_DENSITIES", "TimestepDensity", "family_for_pipeline", "trained_pipelines"]
