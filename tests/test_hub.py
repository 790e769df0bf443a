"""Save / load with mergeplug_config.json and generated model cards (mergeplug/hub.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from chronos import BaseChronosPipeline
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load
from transformers import PatchTSTConfig, PatchTSTForPrediction

import mergeplug
from mergeplug.eval.cli import main
from mergeplug.hub import CONFIG_NAME, FORMAT_VERSION, model_card
from mergeplug.models import chronos_bolt, chronos_t5


def _ctx() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(3, 200).cumsum(-1)


def test_bolt_merged_round_trip_is_bitwise(tmp_path):
    pipe = chronos_bolt("test")
    mergeplug.apply(pipe, k=1, ratio=0.3, input_ratio=0.2)
    with torch.inference_mode():
        before = pipe.predict(_ctx(), prediction_length=12)
    out = mergeplug.save_pretrained(pipe, tmp_path / "m", base_model="amazon/chronos-bolt-small")
    meta = json.loads((out / CONFIG_NAME).read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["mergeplug_version"] == mergeplug.__version__
    assert meta["family"] == "chronos-bolt" and meta["loader"] == "chronos"
    assert meta["merge"]["k"] == 1 and meta["merge"]["ratio"] == 0.3 and meta["merge"]["input_ratio"] == 0.2
    loaded = mergeplug.from_pretrained(out)
    assert mergeplug.settings(loaded) == mergeplug.settings(pipe)
    with torch.inference_mode():
        assert torch.equal(loaded.predict(_ctx(), prediction_length=12), before)
    # the source object is still patched after saving, and the saved weights are the plain model's
    assert mergeplug.settings(pipe) is not None
    plain = BaseChronosPipeline.from_pretrained(str(out))
    mergeplug.remove(pipe)
    with torch.inference_mode():
        assert torch.equal(plain.predict(_ctx(), prediction_length=12), pipe.predict(_ctx(), prediction_length=12))
    # the card: metadata parsed by huggingface_hub, usage, settings, cost
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "time-series-forecasting" and card.data.library_name == "chronos-forecasting"
    assert card.data.base_model == "amazon/chronos-bolt-small" and card.data.license == "apache-2.0"
    assert {"token-merging", "chronos", "chronos-bolt"} <= set(card.data.tags)
    assert metadata_load(out / "README.md")["pipeline_tag"] == "time-series-forecasting"
    assert (
        "mergeplug.from_pretrained(" in card.text
        and 'mergeplug.apply(model, k=1, ratio=0.3, input_ratio=0.2, protect_recent=8, min_tokens=16, period="auto")'
        in card.text
    )  # the forecast-safe values in use are written out, so the card reproduces them whatever the defaults
    assert "| `safe` | `True` |" in card.text and "Forecast-safe merging" in card.text
    params = sum(p.numel() for p in pipe.inner_model.parameters())
    assert f"- Parameters: {params:,}" in card.text and "| `ratio` | `0.3` |" in card.text
    # its code blocks are formatted as the project's formatter wants (cards ship inside the package)
    ruff = Path(sys.executable).parent / "ruff"
    if ruff.exists():
        check = subprocess.run([str(ruff), "format", "--check", str(out / "README.md")], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_chronos_t5_round_trip_same_samples(tmp_path):
    pipe = chronos_t5("test", prediction_length=8, num_samples=4)
    mergeplug.apply(pipe, k=None, r=20)
    torch.manual_seed(0)
    with torch.inference_mode():
        before = pipe.predict(_ctx(), prediction_length=8)
    loaded = mergeplug.from_pretrained(mergeplug.save_pretrained(pipe, tmp_path / "t5"))
    assert type(loaded).__name__ == "ChronosPipeline" and mergeplug.settings(loaded).k is None
    torch.manual_seed(0)
    with torch.inference_mode():
        assert torch.equal(loaded.predict(_ctx(), prediction_length=8), before)


def _patchtst() -> PatchTSTForPrediction:
    torch.manual_seed(0)
    cfg = PatchTSTConfig(
        num_input_channels=1, context_length=64, prediction_length=8, patch_length=8, patch_stride=4, d_model=16,
        num_attention_heads=2, num_hidden_layers=2, ffn_dim=32, loss="mse",
    )  # fmt: skip
    return PatchTSTForPrediction(cfg).eval()


def test_transformers_model_merged_and_unmerged(tmp_path):
    model = _patchtst()
    x = torch.randn(2, 64, 1).cumsum(1)
    mergeplug.apply(model, k=3, r=3)
    with torch.inference_mode():
        before = model(past_values=x).prediction_outputs
    loaded = mergeplug.from_pretrained(mergeplug.save_pretrained(model, tmp_path / "p"))
    assert type(loaded) is type(model) and mergeplug.settings(loaded).r == 3
    with torch.inference_mode():
        assert torch.equal(loaded(past_values=x).prediction_outputs, before)
    meta = json.loads((tmp_path / "p" / CONFIG_NAME).read_text())
    assert meta["model_class"] == "PatchTSTForPrediction" and meta["loader"] == "transformers"
    # unmerged: saved as is, loads unpatched
    mergeplug.remove(model)
    loaded = mergeplug.from_pretrained(mergeplug.save_pretrained(model, tmp_path / "u"))
    assert mergeplug.settings(loaded) is None
    card = (tmp_path / "u" / "README.md").read_text()
    assert "not applied" in card and "token-merging" not in card


def test_reference_only_directory_loads_base_and_applies(tmp_path):
    base = _patchtst()
    base.save_pretrained(tmp_path / "base")
    mergeplug.apply(base, k=1, ratio=0.25)
    ref = mergeplug.save_pretrained(base, tmp_path / "ref", base_model=str(tmp_path / "base"), weights=False)
    assert not (ref / "model.safetensors").exists() and (ref / "README.md").exists()
    loaded = mergeplug.from_pretrained(ref)
    x = torch.randn(2, 64, 1).cumsum(1)
    with torch.inference_mode():
        assert torch.equal(loaded(past_values=x).prediction_outputs, base(past_values=x).prediction_outputs)
    with pytest.raises(ValueError, match="pass base_model"):
        mergeplug.save_pretrained(base, tmp_path / "bad", weights=False)


def test_bad_directories_give_clear_errors(tmp_path, monkeypatch):
    pipe = chronos_bolt("test")
    out = mergeplug.save_pretrained(pipe, tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not written by mergeplug.save_pretrained"):
        mergeplug.from_pretrained(tmp_path)
    meta = json.loads((out / CONFIG_NAME).read_text())
    (out / CONFIG_NAME).write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match="upgrade mergeplug"):
        mergeplug.from_pretrained(out)
    (out / CONFIG_NAME).write_text(json.dumps({**meta, "family": "mamba-9000"}))
    with pytest.raises(ValueError, match="does not know"):
        mergeplug.from_pretrained(out)
    (out / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        mergeplug.from_pretrained(out)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="cannot be reached"):
        mergeplug.from_pretrained("nobody/no-such-model")
    with pytest.raises(TypeError, match="Chronos pipeline"):
        mergeplug.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "lin")


def test_card_with_results_and_cli(tmp_path, capsys):
    pipe = chronos_bolt("test")
    out = mergeplug.save_pretrained(pipe, tmp_path / "m")
    res = tmp_path / "res"
    res.mkdir()
    rows = [
        {"dataset": "m3_yearly", "setting": "seasonal-naive", "MASE": 3.0, "WQL": 0.2},
        {"dataset": "m3_yearly", "setting": "unmerged", "MASE": 2.7, "WQL": 0.15, "speedup": 1.0, "macs_ratio": 1.0},
        {"dataset": "m3_yearly", "setting": "k=1,ratio=0.2", "MASE": 2.8, "WQL": 0.16, "speedup": 1.25,
         "macs_ratio": 1.5},
    ]  # fmt: skip
    (res / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (res / "precheck.md").write_text("spectral summary here")
    assert main(["card", str(out), "--results", str(res), "--name", "bolt-test-merged"]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.text.startswith("\n# bolt-test-merged") or "# bolt-test-merged" in card.text
    assert (
        "| m3_yearly | k=1,ratio=0.2 | 2.800 | 0.160 |" in card.text and "1.25x" in card.text and "1.50x" in card.text
    )
    assert "### Spectral pre-check" in card.text and "spectral summary here" in card.text
    assert main(["card", str(tmp_path)]) == 2
    assert "not written by mergeplug.save_pretrained" in capsys.readouterr().err
    # model_card is the generator behind save_pretrained: extra sections are appended
    text = model_card(out, extra_sections=[("Notes", "hello")]).text
    assert text.rstrip().endswith("## Notes\n\nhello")


def test_push_to_hub_is_a_thin_call(tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", folder_path, repo_id, commit_message))
            return "https://huggingface.co/me/m/commit/abc"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = mergeplug.save_pretrained(chronos_bolt("test"), tmp_path / "m")
    assert mergeplug.push_to_hub(out, "me/m", token="t") == "https://huggingface.co/me/m/commit/abc"
    assert calls == [
        ("init", "t"),
        ("create", "me/m", False, True),
        ("upload", str(out), "me/m", "Upload with mergeplug"),
    ]
    with pytest.raises(FileNotFoundError):
        mergeplug.push_to_hub(tmp_path, "me/x")
