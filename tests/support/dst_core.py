"""The LoRA and plain-DDIM helpers the tests call as ``dst_core.*``; they live in the pack's harness
(``nodes/harness/tiny.py``, ``probes.py``), which the benches and the runner's demo mode use too."""

from __future__ import annotations

from comfyui_diffstyler.nodes.harness.probes import plain_ddim  # noqa: F401 - re-exported for the tests
from comfyui_diffstyler.nodes.harness.tiny import attention_weight_keys, random_lora  # noqa: F401 - re-exported
