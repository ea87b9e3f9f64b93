"""The Cross-LoRA Attention Injector's patches, one job a module (imported by module, never through this file).

``state`` (settings, run and call plans) <- ``arch`` (model families) <- ``attention`` (Q/K replaces), ``layers``
(per-row LoRA, injected residual) <- ``wrapper`` (APPLY_MODEL / CALC_COND_BATCH) <- ``install`` (on a clone).
"""
