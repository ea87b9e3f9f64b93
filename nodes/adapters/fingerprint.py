"""Identity of a MODEL (ModelPatcher) for the caches that must not be reused across models."""

from __future__ import annotations

import hashlib


def model_fingerprint(model) -> str:
    """Identify a MODEL (ModelPatcher) by its weights object, its weight patches and its sampling.

    A ``clone()`` with only object patches or wrappers (what the Injector adds) keeps the
    fingerprint; merging a LoRA or swapping the checkpoint changes it. The weights object is the
    patcher's ``clone_base_uuid`` where the host has one (ComfyUI keeps it through every clone,
    including the non-dynamic delegate ``CFGGuider.inner_set_conds`` swaps in for hooked
    conditionings, which loads the checkpoint again into another BaseModel), else the BaseModel.
    """
    base = model.model
    ms = model.get_model_object("model_sampling")
    first = next(base.diffusion_model.parameters(), None)
    probe = "" if first is None else f"{float(first.detach().flatten()[:64].float().sum()):.6e}"
    weights = getattr(model, "clone_base_uuid", None)
    text = "|".join(
        [
            str(weights) if weights is not None else f"{id(base):x}",
            str(getattr(model, "patches_uuid", "")),
            type(base).__name__,
            type(ms).__name__,
            f"{float(ms.sigma_max):.6g}",
            probe,
        ]
    )
    return hashlib.sha1(text.encode()).hexdigest()[:16]
