"""Recording the content branch's injected features during DDIM inversion (content-feature cache).

The inversion evaluates the UNet on the content trajectory with the content prompt at exactly the
sigmas the sampler's content row needs (see ``InversionResult.content_input_at``). Recording the
injected ResBlock residual and the decoder self-attention Q/K there lets the sampler drop the content
row: one UNet row per step less, for the memory reported by ``FeatureCache.nbytes``.
"""

from __future__ import annotations

import logging

import torch

from ..core.inversion import FeatureCache
from ..core.schedule import in_window
from .injector import arch
from .injector.attention import attend, layer_key, replace_block
from .injector.layers import swapped_copy

logger = logging.getLogger(__name__)

CACHE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


class Recorder:
    """Where the recording patches write; ``step`` is the sampling step index of the current UNet call."""

    def __init__(self, cache: FeatureCache, steps: int, store_device):
        self.cache = cache
        self.steps = steps
        self.step: int | None = None
        self.store_device = store_device

    def want_res(self) -> bool:
        return self.step is not None and in_window(self.step, self.cache.feature_end, self.steps)

    def want_qk(self) -> bool:
        return self.step is not None and in_window(self.step, self.cache.qk_end, self.steps)

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=self.store_device, dtype=self.cache.dtype, copy=True)


class RecordResidualMixin:
    """The injected ResBlock's last residual layer (``arch.UNetFamily.residual_path``): records its output."""

    _ds_recorder: Recorder

    def forward(self, *args, **kwargs):
        h = super().forward(*args, **kwargs)
        rec = self._ds_recorder
        if rec.want_res():
            rec.cache.res[rec.step] = rec.keep(h)
        return h


def make_qk_recorder(rec: Recorder, previous=None):
    def diffstyler_qk_recorder(q, k, v, extra_options):
        if rec.want_qk():
            rec.cache.qk.setdefault(rec.step, {})[layer_key(extra_options)] = (rec.keep(q), rec.keep(k))
        return attend(q, k, v, extra_options, previous)

    return diffstyler_qk_recorder


def recording_clone(model, cache: FeatureCache, steps: int, store_device):
    """A clone of ``model`` whose injected layers record into ``cache``; returns (clone, recorder)."""
    family = arch.family_for(model)
    rec = Recorder(cache, steps, store_device)
    clone = model.clone()
    path = family.residual_path(clone)
    clone.add_object_patch(path, swapped_copy(clone.get_model_object(path), RecordResidualMixin, _ds_recorder=rec))
    for name, bid in family.qk_block_keys():  # every slot ComfyUI may look up, chained to the replace it had
        replace_block(clone, "attn1", name, bid, lambda previous: make_qk_recorder(rec, previous))
    return clone, rec


def log_cache(cache: FeatureCache, latent_shape) -> None:
    n_res, n_qk = cache.steps_recorded()
    logger.info(
        "DiffStyler: content-feature cache %s for latent %s: %d ResBlock steps, %d Q/K steps, %.1f MB",
        str(cache.dtype).replace("torch.", ""),
        list(latent_shape),
        n_res,
        n_qk,
        cache.nbytes() / 2**20,
    )
