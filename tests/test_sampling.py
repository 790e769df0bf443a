"""Fast Chronos-T5 sampling (mergeplug/patches/chronos_sampling.py): same tokens as stock generate()."""

from __future__ import annotations

import pytest
import torch

import mergeplug
from mergeplug.models import chronos_bolt, chronos_t5


@pytest.fixture(scope="module")
def pipe():
    return chronos_t5("test", prediction_length=12, num_samples=6)


def _ctx() -> torch.Tensor:
    torch.manual_seed(5)
    x = torch.randn(3, 150).cumsum(-1)
    x[1, :40] = float("nan")  # padding / missing values in one row
    return x


def _predict(pipe, **kw) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.inference_mode():
        return pipe.predict(_ctx(), **{"prediction_length": 12, **kw})


@pytest.mark.parametrize("merge", [None, {"k": 1, "ratio": 0.3}, {"k": None, "r": 20}])
@pytest.mark.parametrize(
    "kw",
    [
        {"top_k": 1},  # greedy
        {},  # Chronos' defaults (top_k 50)
        {"temperature": 0.7, "top_p": 0.9, "top_k": 0},
        {"prediction_length": 30},  # longer than the model's horizon: Chronos decodes in chunks
    ],
)
def test_fast_path_gives_stock_tokens(pipe, merge, kw):
    mergeplug.remove(pipe)
    if merge:
        mergeplug.apply(pipe, **merge)
    stock = _predict(pipe, **kw)
    mergeplug.fast_sampling(pipe)
    try:
        fast = _predict(pipe, **kw)
    finally:
        mergeplug.remove(pipe)
    assert fast.shape == stock.shape
    assert torch.equal(fast, stock)  # same seed, same samples (the arithmetic rounds alike here)


def test_order_of_patches_and_remove_restore_stock(pipe):
    mergeplug.remove(pipe)
    stock = _predict(pipe)
    cm = pipe.model
    mergeplug.fast_sampling(pipe)
    mergeplug.apply(pipe, k=1, ratio=0.3)  # merging after the fast path: both stay active
    assert "forward" in cm.__dict__ and mergeplug.settings(pipe).ratio == 0.3
    mergeplug.fast_sampling(pipe, enable=False)  # only the fast path goes
    assert "forward" not in cm.__dict__ and mergeplug.settings(pipe) is not None
    mergeplug.fast_sampling(pipe)
    mergeplug.remove(pipe)  # everything goes
    assert "forward" not in cm.__dict__ and type(cm).__name__ == "ChronosModel" and mergeplug.settings(pipe) is None
    assert not [k for k in cm.__dict__ if k.startswith("_mergeplug")]
    assert torch.equal(_predict(pipe), stock)


def test_fast_sampling_rejects_other_models():
    with pytest.raises(TypeError, match="Chronos-Bolt and Chronos-2 predict quantiles"):
        mergeplug.fast_sampling(chronos_bolt("test"))
