"""RealMix semi-supervised image classification, as an importable PyTorch core.

Importing the package only installs the torchvision import fix below; it does not import torch itself
(realmix.params does: the allowed values of its keys live with the torch code that implements them).
"""

from __future__ import annotations

import importlib.abc
import sys
import types

__version__ = "0.1.0"

# The PyPI torchvision 0.28.0 wheel is a CUDA build. On a CPU-only torch its `_meta_registrations`
# module registers fake kernels for compiled ops that do not exist and raises at import time. We stub
# that module (and its autograd twin) before torchvision is first imported -- but only on a CPU torch,
# which we can only learn by importing torch, so the check runs lazily when torchvision is imported.
_STUBBED = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


class _TorchvisionFix(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ARG002 - finder protocol
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)  # one-shot: never interfere with later imports
        import torch

        if torch.version.cuda is None:
            for name in _STUBBED:
                sys.modules.setdefault(name, types.ModuleType(name))
        return None  # let the normal finders import torchvision itself


if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionFix) for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionFix())
