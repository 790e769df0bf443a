"""Fast Chronos-T5 sampling (mergeplug/sampling.py): same tokens as stock generate()."""

from __future__ import annotations

import pytest
import torch

import mergeplug
from mergeplug.models import chronos_bolt, chronos_t5, t5_config


@pytest.fixture(scope="module")
def pipe():
    return chronos_t5("test", prediction_length=12, num_samples=6)


def _ctx(pad: bool = True) -> torch.Tensor:
    torch.manual_seed(5)
    x = torch.randn(3, 150).cumsum(-1)
    if pad:
        x[1, :40] = float("nan")  # padding / missing values in one row
    return x


def _predict(pipe, pad: bool = True, **kw) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.inference_mode():
        return pipe.predict(_ctx(pad), **{"prediction_length": 12, **kw})


@pytest.mark.parametrize(
    "merge",
    [None, {"k": 1, "ratio": 0.3}, {"k": None, "r": 20}, {"k": 1, "ratio": 0.3, "proportional_attention": False}],
)
@pytest.mark.parametrize(
    "kw",
    [
        {"top_k": 1},  # greedy
        {},  # Chronos' defaults (top_k 50)
        {"temperature": 0.7, "top_p": 0.9, "top_k": 0},
        {"prediction_length": 30},  # longer than the model's horizon: Chronos decodes in chunks
        {"pad": False},  # no padding: the cross-attention adds no mask
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


@pytest.mark.parametrize("kw", [{"top_k": 5}, {"top_k": 12, "temperature": 0.7, "top_p": 0.8}, {"top_k": 1}])
def test_top_k_sampler_has_the_distribution_of_generate(kw):
    from mergeplug.sampling import _processors, sample_top_k

    g = torch.Generator().manual_seed(0)
    logits = (2.0 * torch.randn(1, 40, generator=g)).expand(60_000, 40).contiguous()
    logits[:, 3] = logits.max() + 1.0  # the EOS token would be the favourite: it must never be drawn
    procs = _processors(1, 10, 3, kw.get("temperature", 1.0), kw["top_k"], kw.get("top_p", 1.0))
    start = torch.zeros(logits.shape[0], 1, dtype=torch.long)
    torch.manual_seed(1)
    stock = torch.multinomial(procs(start, logits.clone()).softmax(-1), 1).squeeze(1)
    torch.manual_seed(2)
    ours = sample_top_k(logits, kw["top_k"], temperature=kw.get("temperature", 1.0), top_p=kw.get("top_p"), eos=3)
    p_stock = torch.bincount(stock, minlength=40).double() / len(stock)
    p_ours = torch.bincount(ours, minlength=40).double() / len(ours)
    assert p_ours[3] == 0 and (p_ours > 0).sum() <= kw["top_k"]
    assert set(p_ours.nonzero().flatten().tolist()) <= set(p_stock.nonzero().flatten().tolist())
    assert 0.5 * (p_ours - p_stock).abs().sum() < 0.015  # total variation, 60k draws each


@pytest.mark.parametrize("bad", [{"top_k": 0}, {"top_k": 5, "temperature": 0.0}, {"top_k": 5, "top_p": 1.5}])
def test_top_k_sampler_names_bad_settings(bad):
    from mergeplug.sampling import sample_top_k

    with pytest.raises(ValueError, match=next(iter(k for k in bad if k != "top_k" or len(bad) == 1))):
        sample_top_k(torch.zeros(2, 10), **bad)


def test_top_k_sampler_end_to_end(pipe):
    mergeplug.remove(pipe)
    greedy = _predict(pipe, top_k=1)
    mergeplug.fast_sampling(pipe, exact=False)
    try:
        assert torch.equal(_predict(pipe, top_k=1), greedy)  # greedy: generate's tokens
        out = _predict(pipe)
        assert out.shape == (3, 6, 12) and torch.isfinite(out).all()
        mergeplug.fast_sampling(pipe, exact=True)  # switching back: the exact path again
        mergeplug.remove(pipe)
        stock = _predict(pipe)
        mergeplug.fast_sampling(pipe)
        assert torch.equal(_predict(pipe), stock)
    finally:
        mergeplug.remove(pipe)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_top_k_sampler_in_reduced_precision_keeps_greedy_tokens_and_user_hooks(dtype):
    """Reduced-precision top-k path (q, k, v in one product; the whole cache capacity read, later positions masked, the
    cache grown 16 -> 32 -> 40 here): greedy decoding gives stock's tokens, merged or not; a hook on a projection
    makes the step call that module again."""
    pipe = chronos_t5("test", prediction_length=40, num_samples=6)
    pipe.model.to(dtype)
    for merge in (None, {"k": 1, "ratio": 0.3}):
        mergeplug.remove(pipe)
        if merge:
            mergeplug.apply(pipe, **merge)
        greedy = _predict(pipe, top_k=1, prediction_length=40)
        mergeplug.fast_sampling(pipe, exact=False)
        assert torch.equal(_predict(pipe, top_k=1, prediction_length=40), greedy)
    # every step's logits are those of stock T5 run on the sampled paths (teacher forcing), to bfloat16 rounding:
    # a future position left unmasked in the cache capacity moves them by about the logits' own scale
    from mergeplug.sampling import sample_tokens

    mergeplug.remove(pipe)
    model, steps = pipe.model.model, []
    ids, mask, _ = pipe.tokenizer.context_input_transform(_ctx())
    hook = model.lm_head.register_forward_hook(lambda m, a, out: steps.append(out[:, 0].float()))
    with torch.inference_mode():
        paths = sample_tokens(model, ids, mask, prediction_length=40, num_samples=2, top_k=1, exact=False)
        hook.remove()
        start = torch.zeros(6, 1, dtype=torch.long)  # decoder_start_token_id
        ref = model(
            input_ids=ids.repeat_interleave(2, 0), attention_mask=mask.repeat_interleave(2, 0),
            decoder_input_ids=torch.cat([start, paths.reshape(6, 40)[:, :-1]], 1),
        ).logits.float()  # fmt: skip
    got = torch.stack([x.repeat_interleave(6 // x.shape[0], 0) for x in steps], 1)  # step 0 ran once per series
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=0.02 * float(ref.abs().max()), rtol=0)
    calls = []
    greedy = _predict(pipe, top_k=1, prediction_length=40)
    mergeplug.fast_sampling(pipe, exact=False)
    q = pipe.model.model.decoder.block[0].layer[0].SelfAttention.q
    handle = q.register_forward_hook(lambda m, a, out: calls.append(out.shape))
    try:
        assert torch.equal(_predict(pipe, top_k=1, prediction_length=40), greedy)
    finally:
        handle.remove()
    assert len(calls) == 40  # every step called the hooked module


def test_sampling_benchmark_runs_every_setting():
    from mergeplug_lab.bench_sampling import format_table, run

    merges = {"k=1, 30%": {"k": 1, "ratio": 0.3, "safe": False}}  # a 64-step context: plain merging
    rows = run(size="test", batches=(2,), context=64, horizon=8, samples=3, reps=1, merges=merges)
    labels = [r["setting"] for r in rows]
    assert labels[:3] == ["stock", "fast", "fast, top-k sampler"] and len(labels) == 5
    assert rows[0]["speedup"] == 1.0 and all(r["time_s"] > 0 for r in rows)
    assert rows[1]["same_samples_as_stock"] is True  # the exact fast path
    assert "fast, top-k sampler + k=1, 30%" in format_table(rows)
    macs = {r["setting"]: r["macs"] for r in rows}
    # cross-attention keys / values once per series, not per sample; the top-k path shares step 0; merging
    # shortens the encoder and what the decoder attends to
    assert macs["fast"] < macs["stock"] and macs["fast, top-k sampler"] < macs["fast"]
    assert macs["fast + k=1, 30%"] < macs["fast"]
    for r in rows:  # the floor: the call's MACs at the measured best rate (not compared with times: load-dependent)
        assert r["floor_s"] == pytest.approx(r["macs"] / (r["gemm_gmacs"] * 1e9)) and r["floor_s"] > 0
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["macs_ratio"])


def test_sampling_benchmark_reduced_precision_rows():
    """--dtype bfloat16: top-k-sampler rows on a bfloat16 copy of the model (same MACs as float32), timed against
    float32 stock; --only keeps stock and the settings asked for."""
    from mergeplug_lab.bench_sampling import run

    merges = {"k=1, 30%": {"k": 1, "ratio": 0.3, "safe": False}}
    rows = run(size="test", batches=(2,), context=64, horizon=8, samples=3, reps=1, merges=merges,
               dtypes=("bfloat16",), only=("top-k",))  # fmt: skip
    by = {r["setting"]: r for r in rows}
    assert list(by) == ["stock", "fast, top-k sampler", "fast, top-k sampler + k=1, 30%",
                        "bfloat16: fast, top-k sampler", "bfloat16: fast, top-k sampler + k=1, 30%"]  # fmt: skip
    assert by["bfloat16: fast, top-k sampler"]["dtype"] == "bfloat16" and by["stock"]["dtype"] == "float32"
    # the same products, except that a bfloat16 step attends over its whole cache capacity (16 positions here, the
    # horizon 8 at most), the positions after t masked out: exactly those extra q.k and weight.v products
    cfg = t5_config("test")
    b, s, horizon = 2, 3, 8
    masked = sum((b if t == 0 else b * s) * (min(horizon, 16) - (t + 1)) for t in range(horizon))
    extra = 2 * cfg.num_decoder_layers * cfg.num_heads * cfg.d_kv * masked
    assert by["bfloat16: fast, top-k sampler"]["macs"] == by["fast, top-k sampler"]["macs"] + extra
    assert by["bfloat16: fast, top-k sampler + k=1, 30%"]["macs"] < by["bfloat16: fast, top-k sampler"]["macs"]


def test_sampling_benchmark_refuses_an_only_that_matches_nothing(capsys):
    from mergeplug_lab.bench_sampling import main

    with pytest.raises(SystemExit) as exc:
        main(["--size", "tiny", "--only", "nope"])
    assert exc.value.code == 2 and "--only nope: no setting matches" in capsys.readouterr().err


def test_sampling_benchmark_cli_takes_merge_settings(tmp_path, capsys):
    import json

    from mergeplug_lab.bench_sampling import main

    out = tmp_path / "rows.json"
    argv = ["--size", "test", "--batches", "2", "--context", "64", "--horizon", "8", "--samples", "3", "--reps", "1"]
    assert main([*argv, "--merge", "k=1,reduction=0.5", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["setting"] for r in rows][-2:] == ["fast + k=1,reduction=0.5", "fast, top-k sampler + k=1,reduction=0.5"]
    assert rows[-1]["merge"]["k"] == 1 and "fast + k=1,reduction=0.5" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*argv, "--merge", "k=1,ratio=0.2,sampling=fast"])
    assert "not a merge setting" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--merge", "k=1,rr=2"])
    assert "unknown merge key 'rr'" in capsys.readouterr().err
