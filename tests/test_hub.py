"""Save / load with mergeplug_config.json and generated model cards (mergeplug/hub/)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from chronos import BaseChronosPipeline
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load
from transformers import PatchTSTConfig, PatchTSTForPrediction, PreTrainedModel

import mergeplug
import mergeplug.hub as hub
from mergeplug.eval.cli import main
from mergeplug.eval.models import checkpoint_dir
from mergeplug.hub import CARD_MARKER, CONFIG_NAME, FORMAT_VERSION, model_card
from mergeplug.models import chronos_bolt, chronos_t5


def _ctx() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(3, 200).cumsum(-1)


def test_bolt_merged_round_trip_is_bitwise(tmp_path):
    pipe = chronos_bolt("test")
    mergeplug.apply(pipe, k=1, ratio=0.3, input_ratio=0.2)
    with torch.inference_mode():
        before = pipe.predict(_ctx(), prediction_length=12)
    # random weights (mergeplug.models) come from no checkpoint; a trained model of other dims not from this one
    with pytest.raises(ValueError, match="random weights .*save it without base_model"):
        mergeplug.save_pretrained(pipe, tmp_path / "m", base_model="amazon/chronos-bolt-small")
    pipe.inner_model.config.mergeplug_random_weights = False  # as if trained here
    with pytest.raises(ValueError, match=r"does not match this model \(d_model 512 there, 64 here; encoder layers 6"):
        mergeplug.save_pretrained(pipe, tmp_path / "m", base_model="amazon/chronos-bolt-small")
    assert not (tmp_path / "m").exists()  # refused before anything was written
    out = mergeplug.save_pretrained(pipe, tmp_path / "m", base_model="my-org/bolt-test-finetuned")
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
    assert card.data.base_model == "my-org/bolt-test-finetuned" and card.data.license == "apache-2.0"
    assert str(tmp_path) not in card.text and 'mergeplug.from_pretrained("<hub id or local directory>")' in card.text
    assert "| tokens removed by the last layer | reduction 0.61 (constant ratio over 2 layers, 0.2 of the input" in (
        card.text
    )  # 1 - 0.8 * 0.7 * 0.7: what the per-layer values amount to
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
    empty = tmp_path / "cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)
    for bad in ("", "  ", None):  # an empty path would write into the current directory
        with pytest.raises(ValueError, match="needs a directory to write into"):
            mergeplug.save_pretrained(pipe, bad)
    assert list(empty.iterdir()) == []
    for bad in (None, 123, ""):  # once sent to the hub as repository ids (issue 34, point 15)
        with pytest.raises(ValueError, match="needs a local directory or a Hub repository id"):
            mergeplug.from_pretrained(bad)


def test_card_with_results_and_cli(tmp_path, capsys):
    from mergeplug.cost import model_fingerprint

    pipe = chronos_bolt("test")
    mergeplug.apply(pipe, k=1, ratio=0.2)
    out = mergeplug.save_pretrained(pipe, tmp_path / "m")
    res = tmp_path / "res"
    res.mkdir()
    mine, other = model_fingerprint(pipe), model_fingerprint(chronos_bolt("tiny"))
    rows = [
        {"dataset": "file:/home/me/data/m3.csv", "setting": "seasonal-naive", "MASE": 3.0, "WQL": 0.2},
        {"dataset": "file:/home/me/data/m3.csv", "setting": "unmerged", "MASE": 2.7, "WQL": 0.15, "speedup": 1.0,
         "speed_verdict": "reference", "macs_ratio": 1.0, "model_fingerprint": mine},
        {"dataset": "file:/home/me/data/m3.csv", "setting": "k=1,ratio=0.2", "merge": {"k": 1, "ratio": 0.2},
         "MASE": 2.8, "WQL": 0.16, "speedup": 1.25, "speedup_low": 1.1, "speedup_high": 1.4,
         "speed_verdict": "faster", "macs_ratio": 1.5, "model_fingerprint": mine},
        {"dataset": "file:/home/me/data/m3.csv", "setting": "k=1,ratio=0.4", "merge": {"k": 1, "ratio": 0.4},
         "MASE": 2.9, "WQL": 0.17, "speedup": 1.1, "speedup_low": 0.9, "speedup_high": 1.3,
         "speed_verdict": "no measurable change", "macs_ratio": 2.1, "model_fingerprint": mine},
        {"dataset": "tourism_yearly", "setting": "unmerged", "MASE": 2.0, "WQL": 0.1, "model_fingerprint": other},
    ]  # fmt: skip
    (res / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (res / "precheck.md").write_text("spectral summary here")
    assert main(["card", str(out), "--results", str(res), "--name", "bolt-test-merged"]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.text.startswith("\n# bolt-test-merged") or "# bolt-test-merged" in card.text
    # names, not local paths; the saved setting marked; intervals; another model's rows left out, and said so
    assert "/home/me" not in card.text and str(tmp_path) not in card.text
    assert "| m3.csv | k=1,ratio=0.2 **(this model)** | 2.800 | 0.160 |" in card.text
    assert "1.25x [1.10, 1.40]" in card.text and "1.50x" in card.text
    assert "| m3.csv | k=1,ratio=0.4 | 2.900 | 0.170 |" in card.text
    assert "no measurable change [0.90, 1.30]" in card.text
    assert "tourism_yearly" not in card.text.split("left out")[0].split("Measured with")[1]
    assert "(Rows of 1 dataset(s) measured on other models were left out.)" in card.text
    # results of another model only: refused, naming both fingerprints
    (res / "results.jsonl").write_text(json.dumps(rows[-1]) + "\n")
    assert main(["card", str(out), "--results", str(res)]) == 2
    assert f"not measured on this model (its fingerprint is {mine}; the rows have {other}" in capsys.readouterr().err
    (res / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["card", str(out), "--results", str(res), "--name", "bolt-test-merged"]) == 0
    card = ModelCard.load(out / "README.md")
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
    card = (out / "README.md").read_text()  # the usage snippets now name the repo, not a placeholder
    assert 'mergeplug.from_pretrained("me/m")' in card and "<hub id or local directory>" not in card
    with pytest.raises(FileNotFoundError):
        mergeplug.push_to_hub(tmp_path, "me/x")


def _files(directory: Path) -> dict[str, bytes]:
    return {f.relative_to(directory).as_posix(): f.read_bytes() for f in sorted(directory.rglob("*")) if f.is_file()}


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _weights_cut_short(self, directory, **kwargs):
    Path(directory, "model.safetensors").write_bytes(b"partial")  # what a full disk leaves: half a file
    _disk_full()


@pytest.mark.parametrize("failure", ["weights", "card", "results"])
def test_failed_save_leaves_the_previous_save_intact(tmp_path, monkeypatch, failure):
    """A save is built in a temporary directory and moved into place when complete: one that fails part way
    (disk full while writing the weights or the card, a bad results= path) changes nothing of the previous save,
    nor the user's own files, and leaves no temporary directory behind."""
    pipe = chronos_bolt("test")
    mergeplug.apply(pipe, k=1, ratio=0.3)
    with torch.inference_mode():
        before = pipe.predict(_ctx(), prediction_length=12)
    out = mergeplug.save_pretrained(pipe, tmp_path / "m")
    (out / "notes.txt").write_text("the user's own file")
    saved = _files(out)
    # the second save is of another model: other settings, other weights
    mergeplug.apply(pipe, k=2, ratio=0.2)
    with torch.no_grad():
        for p in pipe.inner_model.parameters():
            p.add_(0.5)
    results = None
    if failure == "weights":
        monkeypatch.setattr(PreTrainedModel, "save_pretrained", _weights_cut_short)
    elif failure == "card":
        monkeypatch.setattr(hub.save, "model_card", _disk_full)  # the name save_pretrained calls
    else:
        results = tmp_path / "no-such-results"
    with pytest.raises((OSError, ValueError)):
        mergeplug.save_pretrained(pipe, out, results=results)
    assert _files(out) == saved
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no .m.tmp-XXXX left
    loaded = mergeplug.from_pretrained(out)
    assert mergeplug.settings(loaded).k == 1
    with torch.inference_mode():
        assert torch.equal(loaded.predict(_ctx(), prediction_length=12), before)
    # a failed first save does not even create its directory
    with pytest.raises((OSError, ValueError)):
        mergeplug.save_pretrained(pipe, tmp_path / "new", results=results)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_save_keeps_unrelated_files_and_removes_superseded_weights(tmp_path):
    out = tmp_path / "m"
    (out / "data").mkdir(parents=True)
    own = {"notes.txt": b"mine", "data/x.csv": b"1,2\n", "train.py": b"print()\n"}
    for name, data in own.items():
        (out / name).write_bytes(data)
    stale = ["pytorch_model.bin", "model-00001-of-00002.safetensors", "model.safetensors.index.json"]
    for name in stale:
        (out / name).write_bytes(b"weights of an earlier model")
    model = _patchtst()
    mergeplug.save_pretrained(model, out)
    files = _files(out)
    assert {k: files[k] for k in own} == own
    assert not any((out / name).exists() for name in stale)
    assert {CONFIG_NAME, "config.json", "model.safetensors", "README.md"} <= set(files)
    assert not [p for p in tmp_path.iterdir() if p.name != "m"]
    assert type(mergeplug.from_pretrained(out)) is type(model)


def test_save_across_file_systems_copies_instead_of_renaming(tmp_path, monkeypatch):
    """Issue 34, point 13: a rename from the staging directory into a folder on another file system (a bind mount
    not detected as one) fails with EXDEV; the save then copies, and the result equals a plain save."""
    model = _patchtst()
    plain = _files(mergeplug.save_pretrained(model, tmp_path / "a" / "m"))  # the same name: the same card
    real = os.replace

    def cross_device(src, dst):
        if Path(src).parent.name.startswith(".m.tmp-"):  # out of the staging directory
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(hub.save.os, "replace", cross_device)
    out = mergeplug.save_pretrained(model, tmp_path / "m")
    assert _files(out) == plain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m"]  # no staging or part files left


def test_save_into_a_directory_whose_parent_is_not_writable(tmp_path, monkeypatch):
    """There the temporary directory goes inside the target, and is removed after the move."""
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(hub.save.os, "access", lambda path, mode: Path(path) != tmp_path)
    mergeplug.save_pretrained(_patchtst(), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [CONFIG_NAME, "config.json", "model.safetensors", "README.md", "notes.txt"]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_save_keeps_a_users_readme_unless_overwrite_card(tmp_path, recwarn):
    out = tmp_path / "m"
    out.mkdir()
    users = "# My forecaster\n\nNotes that took me an afternoon.\n"
    (out / "README.md").write_text(users)
    model = _patchtst()
    with pytest.warns(UserWarning, match=r"README\.md was not generated by mergeplug.*overwrite_card=True"):
        mergeplug.save_pretrained(model, out)
    assert (out / "README.md").read_text() == users and (out / CONFIG_NAME).exists()
    mergeplug.save_pretrained(model, out, card=False)  # no card asked for: nothing to warn about
    assert not recwarn.list
    mergeplug.save_pretrained(model, out, overwrite_card=True, model_name="first")
    card = (out / "README.md").read_text()
    assert CARD_MARKER in card and "# first" in card and "afternoon" not in card
    # our own card is regenerated without a warning
    mergeplug.save_pretrained(model, out, model_name="second")
    assert "# second" in (out / "README.md").read_text()
    assert not [w for w in recwarn.list if issubclass(w.category, UserWarning) and "README" in str(w.message)]
    assert ModelCard.load(out / "README.md").data.pipeline_tag == "time-series-forecasting"
    # a card an older mergeplug generated (no marker yet; the shipped checkpoints have such cards) is ours too
    shipped = checkpoint_dir("patchtst-electricity_hourly") / "README.md"
    assert CARD_MARKER not in shipped.read_text()
    (out / "README.md").write_text(shipped.read_text())
    mergeplug.save_pretrained(model, out, model_name="third")
    assert "# third" in (out / "README.md").read_text()
    assert not [w for w in recwarn.list if issubclass(w.category, UserWarning) and "README" in str(w.message)]


def test_missing_local_path_is_named_and_hub_ids_go_to_the_hub(tmp_path, monkeypatch):
    asked = []

    def fake_hub(repo_id, filename):
        asked.append(repo_id)
        raise OSError(f"the Hub was asked for {repo_id}")

    monkeypatch.setattr(hub.format, "_hub_download", fake_hub)  # read_config's
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "models").mkdir()
    missing = [tmp_path / "nope", str(tmp_path / "nope"), "./nope", "../nope", "~/nope", "a/b/c", "models/nope"]
    for location in missing:
        with pytest.raises(FileNotFoundError, match="no such directory") as info:
            mergeplug.from_pretrained(location)
        assert str(location) in str(info.value)
    assert asked == []
    with pytest.raises(OSError, match="the Hub was asked for amazon/chronos-bolt-small"):
        mergeplug.from_pretrained("amazon/chronos-bolt-small")
    assert asked == ["amazon/chronos-bolt-small"]
    # ~ is expanded: a saved directory under the home directory loads as "~/..."
    mergeplug.save_pretrained(_patchtst(), tmp_path / "home" / "m")
    assert hub.read_config("~/m")[1] == tmp_path / "home" / "m"


def test_damaged_config_or_weights_give_clear_errors(tmp_path):
    out = mergeplug.save_pretrained(chronos_bolt("test"), tmp_path / "m")
    cfg = out / CONFIG_NAME
    good = cfg.read_text()
    meta = json.loads(good)
    damaged = {
        "[1, 2]": "is damaged: a JSON list, not an object",
        "{not json": "is damaged: not valid JSON",
        json.dumps({**meta, "merge": "k=1, ratio=0.2"}): "is damaged: 'merge' must be an object",
        json.dumps({**meta, "weights": "yes"}): "is damaged: 'weights' must be true or false",
        json.dumps({**meta, "merge": {"k": 1, "no_such_setting": 2}}): "merge settings this mergeplug cannot apply",
    }
    for text, what in damaged.items():
        cfg.write_text(text)
        with pytest.raises(ValueError, match="(?i)re-save the model with mergeplug.save_pretrained") as info:
            mergeplug.from_pretrained(out)
        assert str(cfg) in str(info.value) and what in str(info.value), str(info.value)
    cfg.write_text(good)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    with pytest.raises(ValueError, match="not a complete safetensors file") as info:
        mergeplug.from_pretrained(out)
    assert str(weights) in str(info.value) and "mergeplug.save_pretrained" in str(info.value)


def test_a_config_naming_something_other_than_a_model_class_is_refused(tmp_path):
    """``model_class`` must name a transformers model class: ``"pipeline"`` (the pipeline function) or a config class
    gave raw AttributeErrors; now one message naming the file."""
    out = mergeplug.save_pretrained(_patchtst(), tmp_path / "m")
    cfg = out / CONFIG_NAME
    meta = json.loads(cfg.read_text())
    for name in ("pipeline", "AutoConfig", "PatchTSTConfig"):
        cfg.write_text(json.dumps({**meta, "model_class": name}))
        with pytest.raises(ValueError, match="is not a transformers model class") as info:
            mergeplug.from_pretrained(out)
        assert str(cfg) in str(info.value) and "re-save the model with mergeplug.save_pretrained" in str(info.value)


def test_save_prints_nothing(tmp_path, capfd):
    """No "Writing model shards" bar (or anything else) on save; transformers' bar setting is left as it was."""
    import transformers.utils.logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()  # the CLIs tested in this process may have switched bars off
    hf_logging.enable_progress_bar()
    try:
        model = _patchtst()
        capfd.readouterr()
        mergeplug.save_pretrained(model, tmp_path / "m")
        out, err = capfd.readouterr()
        assert out == "" and err == ""
        assert hf_logging.is_progress_bar_enabled()
    finally:
        if not was:
            hf_logging.disable_progress_bar()
