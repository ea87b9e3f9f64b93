"""The model families DiffStyler serves: a registry, as ``comfy/supported_models.py`` lists models.

Each family says whether a MODEL is one of its own (``matches``), where and how content features are injected
(``install_injection``, ``injected_attention_paths``) and where the inversion's feature cache records them
(``residual_path``, ``qk_block_keys``). A new family is one new module (as ``unet.py``) plus one line in
``FAMILIES``; everything else (install, feature cache, style checks) asks the family of the MODEL through
``family_for``.
"""

from __future__ import annotations

from . import flux, unet

FAMILIES = (unet.SD1, unet.SDXL, flux.FLUX)  # SD1.x and SD2.x share one block map; SDXL has its own decoder layout
SUPPORTED = "SD1.x, SD2.x and SDXL UNets and Flux.1 (dev, schnell)"


def family_for(model):
    """The family of ``model`` (a ModelPatcher); ValueError naming what it is when none matches."""
    for family in FAMILIES:
        if family.matches(model):
            return family
    kind = flux.flux_kind(model.model)
    if kind is not None:
        raise ValueError(
            f"model: this is a Flux-family model of kind {kind!r} ({type(model.model).__name__}), not Flux.1: "
            "DiffStyler "
            f"supports {SUPPORTED}; Flux.2, Kontext-style and other DiTs are not supported. Load a Flux.1 dev or "
            "schnell model"
        )
    dm = getattr(model.model, "diffusion_model", None)
    n_out = len(getattr(dm, "output_blocks", []))
    raise ValueError(
        f"model: DiffStyler supports {SUPPORTED}; this one ({type(model.model).__name__}, "
        f"{n_out} decoder blocks) is not one of them: load an SD1.x, SD2.x, SDXL or Flux.1 model"
    )
