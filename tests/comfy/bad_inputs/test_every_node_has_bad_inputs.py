"""Every node keeps its bad-input cases: one module per node here, each with tests that expect a clear error."""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = {
    "test_style_inputs.py": "Style LoRA Loader",
    "test_invert_inputs.py": "DDIM Inversion",
    "test_injector_inputs.py": "Cross-LoRA Attention Injector",
    "test_sampler_inputs.py": "Masked Feature Fusion Sampler and its guider",
    "test_fastsam_inputs.py": "FastSAM Loader and FastSAM Mask",
    "test_train_inputs.py": "Train Style LoRA",
}


def error_tests(path: Path) -> list[str]:
    """The test functions of ``path`` that expect an exception (``pytest.raises``)."""
    tree = ast.parse(path.read_text())
    return [
        f.name
        for f in tree.body
        if isinstance(f, ast.FunctionDef)
        and f.name.startswith("test_")
        and any(isinstance(n, ast.Attribute) and n.attr == "raises" for n in ast.walk(f))
    ]


def test_every_node_has_bad_input_cases():
    counts = {f"{name} ({node})": len(error_tests(HERE / name)) for name, node in MODULES.items()}
    assert all(counts.values()), f"a node without a clear-error case: {counts}"
    assert sum(counts.values()) >= 25, counts
