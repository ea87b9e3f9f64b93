"""Glue between the pure core and ComfyUI (ModelPatcher patches, guider/sampler, file parsing)."""
