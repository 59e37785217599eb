"""Make ``import torchvision`` work with a CUDA-built torchvision on a CPU-only torch.

The only torchvision wheel that matches ``torch==2.13.0`` is built against CUDA.
On a CPU build of torch its compiled extension (``torchvision._C``) fails to load,
so the operator schemas it would register (``torchvision::nms`` ...) never exist,
and ``torchvision/_meta_registrations.py`` then fails at import with
``RuntimeError: operator torchvision::nms does not exist``.

smp and timm import torchvision but use only its pure-Python parts. We therefore
declare the two missing schemas with ``torch.library`` (no kernels: calling them
raises), then import again. Where torchvision loads normally (a matching CPU or
CUDA build) the first import succeeds and this module does nothing.
"""

from __future__ import annotations

import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # kept alive: dropping the Library object would unregister the schemas


def ensure_torchvision() -> None:
    """Import torchvision, declaring its missing operator schemas if needed."""
    global _library
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
    for schema in _SCHEMAS.values():
        _library.define(schema)
    import torchvision  # noqa: F401,F811


ensure_torchvision()
