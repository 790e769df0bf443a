"""The compact time-series Transformer (mergeplug/sbt): model, shortcuts, training, efficiency figures, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import mergeplug
from mergeplug.binary import binarize, trainable_binary
from mergeplug_lab.sbt.cli import main
from mergeplug_lab.sbt.efficiency import honest_flops, parameter_summary, reference_flops, storage_summary
from mergeplug_lab.sbt.model import CompactTransformer, SBTConfig
from mergeplug_lab.sbt.tasks import build_task
from mergeplug_lab.sbt.train import TrainSettings, f1_scores, point_adjust, train_run


def _model(**kw) -> CompactTransformer:
    torch.manual_seed(0)
    cfg = {"n_channels": 5, "task": "reconstruction", "d_model": 32, "n_layers": 3, "d_ff": 64, "max_len": 64}
    return CompactTransformer(SBTConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("task", ["reconstruction", "forecast"])
def test_step_t_computes_one_attention_row_and_equals_the_masked_full_matrix(task):
    m = _model(task=task, attention="step-t", qkv_keep=0.6)
    x = torch.randn(4, 50, 5)
    with torch.no_grad():
        fast, slow = m(x), m(x, reference=True)
    assert fast.shape == (4, 5) and (fast - slow).abs().max() <= 1e-5
    fast_macs = mergeplug.profile(m, x).macs
    full = _model(task=task, attention="full", qkv_keep=0.6)
    assert fast_macs < 0.5 * mergeplug.profile(full, x).macs  # the saving is real, not a masked full matrix
    # the current step is hidden: its value never reaches the output
    x2 = x.clone()
    x2[:, -1] += 100.0
    with torch.no_grad():
        assert torch.equal(m(x2), fast)


def test_classification_padding_and_the_fixed_qkv_mask():
    m = _model(task="classification", n_classes=4, qkv_keep=0.5, qkv_seed=3)
    assert abs(float(m.qkv_mask.mean()) - 0.5) < 0.05
    assert torch.equal(m.qkv_mask, _model(task="classification", n_classes=4, qkv_keep=0.5, qkv_seed=3).qkv_mask)
    x = torch.randn(3, 20, 5)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 8:] = False
    with torch.no_grad():
        out = m(x, mask)
        alone = m(x[1:2, :8], mask[1:2, :8])
    assert out.shape == (3, 4) and (out[1] - alone[0]).abs().max() <= 1e-5  # padding changes nothing
    with pytest.raises(ValueError, match="NaN"):
        m(torch.full((1, 5, 5), float("nan")))
    with pytest.raises(ValueError, match="max_len"):
        m(torch.randn(1, 65, 5))
    with pytest.raises(ValueError, match="step-t"):
        SBTConfig(n_channels=2, task="classification", n_classes=3, attention="step-t")


def test_point_adjustment_and_f1():
    labels = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0])
    pred = np.array([0, 0, 1, 0, 0, 0, 0, 0, 1])
    assert point_adjust(pred, labels).tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 1]
    s = f1_scores(pred.astype(float), labels, threshold=0.5)
    assert s["precision"] == 0.5 and s["recall"] == 0.2 and s["precision_pa"] == 0.75 and s["recall_pa"] == 0.6


@pytest.mark.parametrize("variant", ["dense", "sparse-binary"])
def test_training_learns_and_resumes_exactly(tmp_path, variant):
    task = build_task("japanese_vowels", max_series=90, d_model=32, d_ff=64)

    def prepare(model):
        if variant == "dense":
            return None
        binarize(model, density=0.2, init="random", seed=0)
        return trainable_binary(model)

    lr = 1e-3 if variant == "dense" else 2e-2
    kw = {"prepare": prepare, "variant": {"v": variant}, "progress": False}
    settings = TrainSettings(epochs=8, batch_size=16, lr=lr, patience=100)
    model, res = train_run(task, tmp_path / "a", settings, **kw)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]  # learning happened
    assert res["test"]["accuracy"] > 0.3  # chance is 1/9
    # 4 epochs, then resume to 8: the same weights as 8 straight
    train_run(task, tmp_path / "b", TrainSettings(**{**settings.__dict__, "epochs": 4}), **kw)
    resumed, _ = train_run(task, tmp_path / "b", settings, **kw)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="different run"):
        train_run(task, tmp_path / "a", settings, prepare=None, variant={"v": "other"}, progress=False)


def test_efficiency_figures_count_what_runs():
    c = {"n_channels": 4, "task": "forecast", "d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32, "max_len": 30}
    dense = CompactTransformer(SBTConfig(**c)).eval()
    x = torch.randn(2, 30, 4)
    t, d, f = 30, 16, 32
    per_layer = 4 * t * d * d + 2 * t * t * d + 2 * t * d * f  # q, k, v, o; scores and values; FFN
    macs = t * 4 * d + 2 * per_layer + d * 4  # embedding, layers, head on the last step
    assert honest_flops(dense, x)["flops"] == 2 * macs
    assert parameter_summary(dense)["total"] == sum(p.numel() for p in dense.parameters())
    sb = CompactTransformer(SBTConfig(**c, attention="step-t", bias=False)).eval()
    binarize(sb, density=0.25, init="random", seed=0)
    params = parameter_summary(sb)
    assert params["total"] == sum(p.numel() for p in sb.parameters() if p.dim() < 2 or p.numel() < 40) + sum(
        m.in_features * m.out_features for m in sb.modules() if isinstance(m, torch.nn.Linear)
    )
    assert params["nonzero"] < 0.35 * params["total"]
    dense_bytes, sb_bytes = storage_summary(dense)["bytes"], storage_summary(sb)["bytes"]
    assert sb_bytes < dense_bytes / 8
    assert honest_flops(sb, x)["flops"] < honest_flops(dense, x)["flops"] / 4
    assert reference_flops(sb, 30) < reference_flops(dense, 30)


def test_cli_trains_reports_and_skips_finished_runs(tmp_path, capsys):
    args = ["train", "--task", "kdd_tsad_135", "--variant", "dense", "sparse-binary", "--seeds", "0",
            "--epochs", "1", "--max-series", "200", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    res = json.loads((tmp_path / "kdd_tsad_135" / "sparse-binary" / "seed0" / "result.json").read_text())
    assert {"f1", "f1_pa", "precision_pa"} <= set(res["test"]) and res["threshold_rule"].startswith("max score")
    assert res["efficiency"]["storage"]["format"] == "packed"
    capsys.readouterr()
    assert main(args) == 0  # finished: reloaded, not retrained
    assert (
        main(["report", "--out", str(tmp_path), "--md", str(tmp_path / "t.md"), "--plot", str(tmp_path / "p.png")]) == 0
    )
    text = capsys.readouterr().out
    assert "kdd_tsad_135 | sparse-binary" in text and (tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(SystemExit):
        main(["train", "--task", "no_such_task"])


def test_sparse_binary_ft_starts_from_the_trained_dense_model(tmp_path, capsys):
    from mergeplug.binary import binary_layers

    base = ["train", "--task", "kdd_tsad_135", "--seeds", "0", "--epochs", "1", "--max-series", "200",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(base + ["--variant", "sparse-binary-ft"]) == 2  # no dense-step-t run to start from yet
    assert "train it first (--variant dense-step-t sparse-binary-ft" in capsys.readouterr().err
    assert main(base + ["--variant", "dense-step-t", "sparse-binary-ft", "--lr", "0"]) == 0  # lr 0: init only
    run = tmp_path / "kdd_tsad_135"
    res = json.loads((run / "sparse-binary-ft" / "seed0" / "result.json").read_text())
    assert res["init_from"] == "dense-step-t" and res["efficiency"]["storage"]["format"] == "packed"
    dense = torch.load(run / "dense-step-t" / "seed0" / "best.pt", weights_only=True)
    cfg = json.loads((run / "sparse-binary-ft" / "seed0" / "run.json").read_text())["model"]
    model = CompactTransformer(SBTConfig(**cfg))
    binarize(model, density=0.1, init="weights")
    model.load_state_dict(torch.load(run / "sparse-binary-ft" / "seed0" / "best.pt", weights_only=True))
    for name, m in binary_layers(model).items():  # signs and kept positions come from the dense weights
        w, eff = dense[f"{name}.weight"], m.effective_weight()
        kept = eff != 0
        assert torch.equal(torch.sign(eff[kept]), torch.sign(w[kept])), name
        assert kept.flatten()[w.abs().flatten().topk(int(kept.sum())).indices].all(), name


def test_sparse_binary_kd_learns_from_the_trained_dense_step_t_model(tmp_path, capsys, monkeypatch):
    import mergeplug_lab.sbt.cli as cli
    from mergeplug_lab.sbt.train import predict

    seen = {}

    def recording_train_run(spec, *args, **kw):
        seen[kw["variant"]["variant"]] = spec
        return train_run(spec, *args, **kw)

    monkeypatch.setattr(cli, "train_run", recording_train_run)
    base = ["train", "--task", "kdd_tsad_135", "--seeds", "0", "--epochs", "2", "--max-series", "200",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(base + ["--variant", "sparse-binary-kd"]) == 2  # no teacher yet
    assert "train it first (--variant dense-step-t sparse-binary-kd" in capsys.readouterr().err
    assert main(base + ["--variant", "sparse-binary-kd", "--kd-beta", "1.5"]) == 2  # checked before any training
    assert "kd_beta" in capsys.readouterr().err and not seen
    assert main(base + ["--variant", "dense-step-t", "sparse-binary-kd", "--kd-beta", "0.25"]) == 0
    res = json.loads((tmp_path / "kdd_tsad_135" / "sparse-binary-kd" / "seed0" / "result.json").read_text())
    assert res["teacher"] == "dense-step-t" and res["kd_beta"] == 0.25
    assert res["efficiency"]["storage"]["format"] == "packed" and "f1" in res["test"]

    # what the student trained on: the blend; validation and test keep the true targets
    student, plain = seen["sparse-binary-kd"], seen["dense-step-t"]
    teacher = cli._load_teacher(tmp_path / "kdd_tsad_135" / "dense-step-t" / "seed0" / "best.pt", "kdd_tsad_135",
                                1.0, 200, None)  # fmt: skip
    with torch.no_grad():
        t = predict(teacher, plain.train[0], None)
    y = plain.train[2]
    assert not torch.equal(t, y)
    torch.testing.assert_close(student.train[2], 0.75 * y + 0.25 * t, rtol=0, atol=0)
    for part in ("val", "test"):
        assert torch.equal(getattr(student, part)[2], getattr(plain, part)[2])
    assert torch.equal(student.train[0], plain.train[0])

    capsys.readouterr()
    assert main(base + ["--variant", "sparse-binary-kd", "--kd-beta", "0.5"]) == 2  # another beta, same directory
    assert "'kd_beta': 0.25" in capsys.readouterr().err
    settings = TrainSettings(epochs=1)
    with pytest.raises(ValueError, match="distils regression targets"):
        cli.run_variant("japanese_vowels", "sparse-binary-kd", 0, tmp_path, settings)
    other = tmp_path / "other" / "kdd_tsad_135"
    shutil.copytree(tmp_path / "kdd_tsad_135" / "dense-step-t", other / "dense-step-t")
    with pytest.raises(ValueError, match="another model or data"):  # the teacher was trained on 200 windows
        cli.run_variant("kdd_tsad_135", "sparse-binary-kd", 0, other.parent, settings, max_series=100)
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert "kdd_tsad_135 | sparse-binary-kd" in capsys.readouterr().out


def test_threshold_free_anomaly_metrics():
    from mergeplug_lab.sbt.train import average_precision, top1_hit

    labels = np.array([0, 0, 1, 1, 0, 0])
    assert average_precision(np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.0]), labels) == 1.0
    assert average_precision(np.array([0.9, 0.2, 0.8, 0.1, 0.3, 0.0]), labels) == pytest.approx((1 / 2 + 2 / 5) / 2)
    assert top1_hit(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), labels, slack=2) == 1.0
    assert top1_hit(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), labels, slack=1) == 0.0


def test_cosine_schedule_is_applied_and_fixes_the_epochs(tmp_path):
    task = build_task("japanese_vowels", max_series=60, d_model=16, d_ff=32)
    settings = TrainSettings(epochs=4, batch_size=16, lr=1e-2, patience=100, schedule="cosine")
    assert [settings.lr_at(e) for e in range(4)] == pytest.approx([1e-2, 0.5e-2 * (1 + 2**-0.5), 0.5e-2,
                                                                    0.5e-2 * (1 - 2**-0.5)])  # fmt: skip
    train_run(task, tmp_path, settings, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in log] == [settings.lr_at(e) for e in range(4)]
    longer = TrainSettings(**{**settings.__dict__, "epochs": 8})  # a longer cosine run is another schedule
    with pytest.raises(ValueError, match="different run"):
        train_run(task, tmp_path, longer, progress=False)
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainSettings(schedule="linear")


def test_a_run_directory_never_mixes_settings_and_bad_input_is_named(tmp_path, capsys):
    args = ["train", "--task", "kdd_tsad_135", "--variant", "dense", "--seeds", "0", "--epochs", "1",
            "--max-series", "100", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(args[:-4] + ["--lr", "0.01", "--max-series", "100", "--out", str(tmp_path)]) == 2
    assert "other settings" in capsys.readouterr().err
    bad = ["train", "--task", "japanese_vowels", "--variant", "sparse-binary", "--density", "1.5", "--seeds", "0",
           "--epochs", "1", "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(bad) == 2
    assert "density" in capsys.readouterr().err


def test_d_model_override_is_used_and_recorded(tmp_path, capsys):
    args = ["train", "--task", "kdd_tsad_135", "--variant", "sparse-binary", "--seeds", "0", "--epochs", "1",
            "--max-series", "100", "--out", str(tmp_path)]  # fmt: skip
    assert main([*args, "--d-model", "16"]) == 0
    run = tmp_path / "kdd_tsad_135" / "sparse-binary" / "seed0"
    assert json.loads((run / "run.json").read_text())["model"]["d_model"] == 16
    assert json.loads((run / "result.json").read_text())["d_model"] == 16
    assert torch.load(run / "best.pt", weights_only=True)["embed.weight"].shape[0] == 16
    capsys.readouterr()
    assert main(["report", "--out", str(tmp_path)]) == 0  # its own row, labelled with the width
    assert "sparse-binary (d_model 16)" in capsys.readouterr().out
    assert main(args) == 2  # the task's default width is another run: not mixed into this directory
    assert "other settings" in capsys.readouterr().err
    assert main([*args, "--d-model", "0", "--out", str(tmp_path / "z")]) == 2
    assert "d_model must be a positive width" in capsys.readouterr().err


def test_best_of_chooses_restarts_on_validation_only():
    from mergeplug_lab.sbt.cli import best_of

    runs = [{"seed": s, "val_metric": v, "test": {"f1": f}} for s, v, f in
            [(0, -3.0, 0.9), (1, -1.0, 0.1), (2, -2.0, 0.2), (3, -5.0, 0.8), (4, -1.0, 0.5)]]  # fmt: skip
    assert [r["seed"] for r in best_of(runs, 2)] == [1, 2]  # seed 4 alone is an incomplete group: left out
    assert [r["seed"] for r in best_of(runs, 1)] == [0, 1, 2, 3, 4]
    assert [r["seed"] for r in best_of(runs[1:], 2)] == [2]  # group 0-1 lacks seed 0
    with pytest.raises(ValueError, match="at least 1"):
        best_of(runs, 0)
    assert main(["report", "--out", "unused", "--best-of", "0"]) == 2
