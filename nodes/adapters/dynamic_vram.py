"""ComfyUI's dynamic VRAM loading (``ModelPatcherDynamic``, the default on NVIDIA GPUs from ComfyUI v0.12) and
the two things of this pack it does not fit.

Under dynamic loading the weights stay in RAM and each layer's forward casts them to the GPU through a
virtual buffer (``comfy.ops.cast_bias_weight`` with the layer's ``_v``); ``load`` only stages them.

* **Injector** (class-swapped object patches, ``injector/layers.swapped_copy``): a view shares the ``__dict__`` of one
  layer of *this* model. When a conditioning carries hooks, ``CFGGuider.inner_set_conds`` swaps the MODEL for
  ``get_non_dynamic_delegate()``: a second BaseModel loaded again from the checkpoint, which copies the object
  patches, so the delegate's tree would hold layers of the dynamic model (its weights, its staging state) and
  its loader would move and patch them in place. A non-dynamic patched MODEL is never swapped.
* **Train Style LoRA** (``training.LoraDenoiser``): ``torch.func.functional_call`` replaces each target weight
  by ``W + delta`` for one call; under dynamic loading ``W`` stays in RAM and the forward reads the layer's
  staged GPU copy, so the trained deltas would meet a CPU weight (a device error) or be bypassed.

Both therefore work on ComfyUI's own non-dynamic delegate of the input MODEL (the one core builds for hooked
conditionings, cached on that MODEL): the classic loader, weights on the device as parameters, as on hosts
without dynamic VRAM. Hosts are detected by ``ModelPatcher.is_dynamic``, never by version. On the CPU there is
no dynamic loading (ComfyUI builds a plain ModelPatcher), so nothing changes there.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)
_LOGGED: set[str] = set()


def is_dynamic(model) -> bool:
    """Whether ``model`` (a ModelPatcher) loads its weights dynamically (ComfyUI's ``ModelPatcherDynamic``)."""
    probe = getattr(model, "is_dynamic", None)
    return bool(probe()) if callable(probe) else False


def static_clone(model, what: str):
    """A ``clone()`` of ``model`` that loads its weights the classic way (see the module docstring).

    ``what`` names the node for the log line and the error. Logs once per node kind.
    """
    if not is_dynamic(model):
        return model.clone()
    if getattr(model, "cached_patcher_init", None) is None:
        raise ValueError(
            f"model: {what} needs the model's weights loaded the classic way, but this MODEL uses ComfyUI's dynamic "
            "VRAM loading and its loader cannot load it again without it: load the checkpoint with a core loader "
            "(Load Checkpoint, Load Diffusion Model) or start ComfyUI with --disable-dynamic-vram"
        )
    if what not in _LOGGED:
        _LOGGED.add(what)
        logger.info(
            "DiffStyler: %s runs on ComfyUI's non-dynamic copy of the model (dynamic VRAM loading does not fit its "
            "patches); it holds a second copy of the weights in RAM while the MODEL is in use",
            what,
        )
    return model.get_non_dynamic_delegate()
