"""The model families DiffStyler serves: a registry, as ``comfy/supported_models.py`` lists models.

Each family says whether a MODEL is one of its own (``matches``), where and how content features are injected
(``install_injection``, ``injected_attention_paths``) and where the inversion's feature cache records them
(``residual_path``, ``qk_block_keys``). A new family is one new module (as ``unet.py``) plus one line in
``FAMILIES``; everything else (install, feature cache, style checks) asks the family of the MODEL through
``family_for``.
"""

from __future__ import annotations

from . import unet

FAMILIES = (unet.SD1, unet.SDXL)  # SD1.x and SD2.x share one block map; SDXL has its own decoder layout
SUPPORTED = "SD1.x, SD2.x and SDXL"


def family_for(model):
    """The family of ``model`` (a ModelPatcher); ValueError naming what it is when none matches."""
    for family in FAMILIES:
        if family.matches(model):
            return family
    dm = getattr(model.model, "diffusion_model", None)
    n_out = len(getattr(dm, "output_blocks", []))
    raise ValueError(
        f"model: DiffStyler supports {SUPPORTED} UNets; this one ({type(model.model).__name__}, "
        f"{n_out} decoder blocks) is not one of them: load an SD1.x, SD2.x or SDXL checkpoint"
    )
