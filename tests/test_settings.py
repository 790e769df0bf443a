"""One settings vocabulary: MergeConfig's fields define apply's arguments, setting strings, saved configs and help."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import mergeplug
from mergeplug.config import DECODER_KEYS, MergeConfig
from mergeplug.core import APPLY_KEYS, apply_kwargs
from mergeplug.eval.run import MERGE_KEYS, parse_merge


def _encoder() -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 3, enable_nested_tensor=False).eval()


def test_the_settings_are_the_fields_and_everything_else_is_derived_from_them():
    names = MergeConfig.setting_names()
    assert names[-1] == "decoder" and "steps_per_token" not in names and "extra" not in names
    assert APPLY_KEYS == names[:-1]
    assert set(MergeConfig.string_keys()) == set(APPLY_KEYS) and set(MERGE_KEYS) >= set(APPLY_KEYS)
    for name in names:  # every setting's help reaches both docstrings
        assert f"    {name}: " in MergeConfig.__doc__ and f"    {name}: " in mergeplug.apply.__doc__
    fields = {f.name: f for f in dataclasses.fields(MergeConfig)}
    assert all(fields[n].metadata["help"] for n in names)


@pytest.mark.parametrize(
    "text",
    ["k=1,ratio=0.2", "k=global,r=3:1:0,proportional_attention=false", "k=1,threshold=0.9,causal=true",
     "k=3,ratio=0.1:0.2,protect_recent=24,period=auto",
     "k=2,input_ratio=0.5,safe=false,min_tokens=8,min_similarity=0.5"],
)  # fmt: skip
def test_setting_strings_round_trip(text):
    config = MergeConfig.from_string(text)
    assert MergeConfig.from_string(str(config)) == config
    assert str(config) == text  # k first, then the changed settings in field order


def test_bad_setting_strings_name_the_key_and_the_keys_there_are():
    with pytest.raises(ValueError, match=r"unknown merge key 'ration'.*known keys: k, r, ratio"):
        MergeConfig.from_string("k=1,ration=0.2")
    with pytest.raises(ValueError, match="bad value for 'safe': use true or false"):
        MergeConfig.from_string("ratio=0.2,safe=maybe")
    with pytest.raises(ValueError, match="'k' is given twice"):
        MergeConfig.from_string("k=1,k=2,r=1")
    with pytest.raises(ValueError, match="ratio must be in"):  # the field's own check
        MergeConfig.from_string("ratio=1.5")
    with pytest.raises(ValueError, match="known keys: .*reduction, schedule, sampling"):  # the harness adds its own
        parse_merge("k=1,ration=0.2")


def test_apply_takes_a_config_with_overrides_and_refuses_unknown_settings():
    x = torch.randn(2, 30, 16)
    a, b = _encoder(), _encoder()
    with torch.no_grad():
        mergeplug.apply(a, k=1, ratio=0.3, min_similarity=0.2)
        mergeplug.apply(b, MergeConfig.from_string("k=1,ratio=0.3,min_similarity=0.2"))
        assert torch.equal(a(x), b(x)) and mergeplug.settings(a) == mergeplug.settings(b)
        mergeplug.apply(b, mergeplug.settings(a), r=2)  # an amount given here replaces the config's
    assert mergeplug.settings(b).r == 2 and mergeplug.settings(b).ratio is None
    assert mergeplug.settings(b).min_similarity == 0.2
    with pytest.raises(TypeError, match="unknown setting.*ration.*the settings are k, r, ratio"):
        mergeplug.apply(a, k=1, ration=0.3)
    with pytest.raises(TypeError, match="config must be a mergeplug.MergeConfig"):
        mergeplug.apply(a, {"k": 1, "ratio": 0.3})
    assert mergeplug.settings(a).ratio == 0.3  # refused calls changed nothing


def test_decoder_settings_are_a_typed_field():
    config = MergeConfig(ratio=0.1, decoder={"k": 1, "ratio": 0.2})
    assert isinstance(config.decoder, MergeConfig) and config.decoder.causal and config.decoder.ratio == 0.2
    assert apply_kwargs(config)["decoder"] == {k: getattr(config.decoder, k) for k in DECODER_KEYS}
    assert config.to_dict()["decoder"]["ratio"] == 0.2
    with pytest.raises(ValueError, match="decoder must be a dict of mergeplug.merge_decoder settings"):
        MergeConfig(r=1, decoder={"k": 1, "min_tokens": 3})
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                                num_heads=4, decoder_start_token_id=0)).eval()  # fmt: skip
    mergeplug.apply(model, k=1, r=0, decoder={"k": 1, "ratio": 0.3})
    assert mergeplug.settings(model).decoder == MergeConfig.for_decoder({"k": 1, "ratio": 0.3})
    mergeplug.merge_decoder(model, k=1, r=2)
    assert mergeplug.settings(model).decoder.r == 2 and mergeplug.settings(model).r == 0  # the encoder's stay
    mergeplug.apply(model, k=1, r=1)  # apply resets the decoder settings
    assert mergeplug.settings(model).decoder is None
