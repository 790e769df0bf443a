"""What several test files share: the check that a model is back to its original state."""

from __future__ import annotations

from torch import nn

from mergeplug.patches.base import AUX_ATTR, RECORD_ATTR


def assert_pristine(model: nn.Module) -> None:
    """``model`` (a pipeline's ``.model`` or a module) holds only its own classes, no mergeplug record and no hooks:
    what ``mergeplug.remove`` must give back."""
    for module in model.modules():
        assert type(module).__module__.split(".")[0] in ("transformers", "chronos", "torch"), type(module)
        assert RECORD_ATTR not in module.__dict__ and AUX_ATTR not in module.__dict__
        assert not [key for key in module.__dict__ if key.startswith("_mergeplug")]
        assert not module._forward_hooks and not module._forward_pre_hooks
