"""The GPU check's code path on the CPU (``--smoke``), and the data-loading benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diga.benchmarks import data_loading, gpu
from diga.config import load_config


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_measurement(tmp_path, one_torch_thread):
    gpu.main(["--smoke", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["device"] == "cpu" and result["model"] == "deeplabv2_tiny"
    rows = {(r["precision"], r["stage"]): r for r in result["rows"]}
    assert set(rows) == {(p, s) for p in ("fp32", "bf16", "bf16+cl") for s in gpu.STAGES}
    for (_, stage), row in rows.items():
        assert row["step_s"] > 0
        per_step = 2 * (1 if stage == "source" else 2)  # batch 2, and a target batch
        assert row["images_per_s"] == pytest.approx(per_step / row["step_s"])
        assert ("ratio_to_bare" in row) == (stage == "warmup")
    assert result["skipped"] == ["bf16+cl+compile: not in the CPU smoke run"]
    assert result["syncs_per_step"] == {"warmup": 0, "selftrain": 0}
    inf = result["inference"]
    assert min(inf["eval_images_per_s"], inf["pseudo_labels_images_per_s"],
               inf["centroids_images_per_s"]) > 0
    # the projection is the schedule's arithmetic on the fastest precision's numbers
    proj = result["projection"]
    fastest = min((r for r in result["rows"] if r["stage"] == "warmup"),
                  key=lambda r: r["step_s"])["precision"]
    cfg = load_config(gpu.PRESET, gpu.smoke_overrides(gpu.PRESET))
    evals_warm = (80000 - 1) // 2000 + 1
    expected_warm = (80000 * rows[(fastest, "warmup")]["step_s"]
                     + evals_warm * gpu.CITYSCAPES_VAL / inf["eval_images_per_s"])
    expected_round = (gpu.CITYSCAPES_TRAIN / inf["pseudo_labels_images_per_s"]
                      + gpu.CITYSCAPES_TRAIN / inf["centroids_images_per_s"]
                      + 80000 * rows[(fastest, "selftrain")]["step_s"]
                      + evals_warm * gpu.CITYSCAPES_VAL / inf["eval_images_per_s"])
    assert proj["precision"] == fastest and proj["rounds"] == cfg.selftrain.rounds == 2
    assert proj["total_h"] * 3600 == pytest.approx(expected_warm + 2 * expected_round)
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| bf16+cl | warmup |" in table and "Projected schedule (" in table


def test_gpu_check_without_a_gpu_says_how_to_run_the_smoke(monkeypatch):
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--smoke"):
        gpu.check(smoke=False)


def test_data_loading_at_real_resolution(tmp_path, one_torch_thread):
    gta, cs = data_loading.write_trees(tmp_path, 1)
    png = next((cs / "leftImg8bit" / "train").rglob("*.png"))
    from PIL import Image

    assert Image.open(png).size == (2048, 1024)
    assert Image.open(next((gta / "images").glob("*.png"))).size == (1914, 1052)
    decoded = [fn(png) for fn in data_loading.decoders().values()]
    assert all(np.array_equal(decoded[0], d) for d in decoded[1:])  # the same pixels
    result = data_loading.measure(images=1, step_s=0.5)
    for domain in ("source", "target"):
        d = result["domains"][domain]
        assert d["images_per_s_per_worker"] > 0 and d["png_mb"] > 1.0  # real files' size
    assert result["workers_needed"] == pytest.approx(result["worker_s_per_step"] / 0.5)


def test_a_stage_out_of_memory_is_a_note_and_the_check_goes_on(monkeypatch):
    from diga.benchmarks import training

    def step_time(cfg, stage, steps, work, warm=3):
        if stage == "selftrain":
            raise gpu.torch.cuda.OutOfMemoryError("CUDA out of memory")
        return 0.25

    monkeypatch.setattr(training, "real_step_time", step_time)
    monkeypatch.setattr(training, "bare_step_time", lambda *a, **k: 0.2)
    result = gpu.check(steps=2, smoke=True)
    assert {(r["precision"], r["stage"]) for r in result["rows"]} == {
        (p, s) for p in ("fp32", "bf16", "bf16+cl") for s in ("source", "warmup")}
    assert all(r["ratio_to_bare"] == pytest.approx(1.25) for r in result["rows"]
               if r["stage"] == "warmup")
    assert "fp32 selftrain: out of GPU memory" in result["skipped"]
    assert result["skipped"][-1] == "syncs, inference, projection: no precision ran every stage"
    assert result["projection"] is None
    assert "| fp32 | warmup | 0.250 |" in gpu.markdown(result)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["synthia2cs-segformer-b5"])
def test_gpu_check_smoke_of_the_other_networks(tmp_path, one_torch_thread, preset):
    """The check's every measurement for a preset of another network family (SegFormer's small
    variant on the CPU; fp32, the other precisions are the DeepLabV2 smoke's code): step
    times, the warm-up's ratio to its bare passes, no host sync between log points, inference
    throughput and the schedule's projection. (HRNet-OCR's smoke took 70 s of the suite's 15
    minutes; the family goes through every stage in the paper-preset rehearsal, and
    ``python -m diga.benchmarks.gpu --smoke --preset gta2cs-hrnet48-ocr`` runs it by hand.)"""
    gpu.main(["--smoke", "--preset", preset, "--precision", "fp32", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    small = {"gta2cs-hrnet48-ocr": "hrnet18_ocr", "synthia2cs-segformer-b5": "segformer_mit_b0"}
    assert (result["preset"], result["model"]) == (preset, small[preset])
    warm = [r for r in result["rows"] if r["stage"] == "warmup"]
    assert len(warm) == 1 and all(r["ratio_to_bare"] > 0 for r in warm)
    assert {r["stage"] for r in result["rows"]} == {"source", "warmup", "selftrain"}
    assert "bf16: not asked for (--precision)" in result["skipped"]
    assert result["syncs_per_step"] == {"warmup": 0, "selftrain": 0}
    cfg = load_config(preset)
    proj = result["projection"]
    assert (proj["warmup_steps"], proj["selftrain_steps"]) == (cfg.stage_steps("warmup"),
                                                               cfg.stage_steps("selftrain"))
    assert proj["total_h"] > 0
