"""The evidence table (benchmarks/evidence.py): summary statistics, table, and one real seed."""

from __future__ import annotations

import json

import pytest

from diga.benchmarks.evidence import ROWS, SELECTIONS, main, markdown, oracle_config, summarize
from diga.config import load_config


def _seed(seed: int, offset: float) -> dict:
    miou = dict(zip(ROWS, (10.0, 9.0, 16.0, 19.0, 20.0, 30.0), strict=True))
    miou = {k: v + offset for k, v in miou.items()}
    sel = {s: {"miou": 18.0 + i + offset, "pl_acc_raw": 0.7, "pl_acc_kept": 0.7 + 0.05 * i,
               "kept": 1.0 - 0.1 * i} for i, s in enumerate(SELECTIONS)}
    return {"seed": seed, "miou": miou, "gap_closure": 0.5, "selection": sel}


def test_summary_is_mean_and_sample_std_over_seeds():
    summary = summarize([_seed(0, 0.0), _seed(1, 2.0), _seed(2, 4.0)])
    assert summary["miou"]["source-only"] == {"mean": 12.0, "std": 2.0}
    assert summary["gains"]["warm-up - source-only"] == pytest.approx(6.0)
    assert summary["gains"]["round 2 - warm-up"] == pytest.approx(4.0)
    assert summary["selection"]["consensus"]["kept"]["mean"] == pytest.approx(0.8)
    table = markdown(summary, 3)
    assert "| source-only | 12.0 ± 2.0 |" in table
    assert "| gap closure (round 2 - source) / (oracle - source) | 50.0 ± 0.0 % |" in table
    assert "| consensus | 22.0 ± 2.0 | 70.0 ± 0.0 % | 80.0 ± 0.0 % | 80.0 ± 0.0 % |" in table


def test_oracle_trains_on_the_labelled_target_domain():
    cfg = load_config("demo", [])
    oracle = oracle_config(cfg)
    assert oracle.data.source.builtin_domain == "target"
    assert cfg.data.source.builtin_domain is None  # the original is untouched
    real = load_config("demo", ["data.target.kind=cityscapes", "data.target.root=/data/cs"])
    assert oracle_config(real).data.source.kind == "cityscapes"


@pytest.mark.slow
def test_one_seed_end_to_end(tmp_path, tiny):
    out = tmp_path / "evidence"
    main([*tiny, "--seeds", "0", "--out", str(out)])
    result = json.loads((out / "evidence.json").read_text())
    seed = result["seeds"][0]
    assert set(seed["miou"]) == set(ROWS)
    assert all(0.0 <= v <= 100.0 for v in seed["miou"].values())
    # argmax keeps every pseudo-labelled pixel; consensus and threshold keep a subset
    assert seed["selection"]["argmax"]["kept"] == pytest.approx(1.0)
    assert seed["selection"]["consensus"]["kept"] <= 1.0
    for name in ("source", "symkd", "warmup", "oracle", "selftrain-consensus/round2",
                 "selftrain-argmax/round1", "selftrain-threshold/round1"):
        assert (out / "seed0" / name / "checkpoints" / "last").is_dir(), name
    assert (out / "evidence.md").read_text().startswith("| stage |")
    before = (out / "seed0" / "source" / "metrics.jsonl").read_text()
    main([*tiny, "--seeds", "0", "--out", str(out)])  # finished runs are reused, not retrained
    assert (out / "seed0" / "source" / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_parallel_seeds_give_the_numbers_of_one_process(tmp_path, tiny, one_torch_thread):
    """--jobs 2: seeds in parallel single-threaded processes, the same numbers as seed by seed
    in this process with --threads 1 (one thread's float kernels either way)."""
    parallel, serial = tmp_path / "parallel", tmp_path / "serial"
    main([*tiny, "--seeds", "0", "1", "--jobs", "2", "--out", str(parallel)])
    result = json.loads((parallel / "evidence.json").read_text())
    assert [s["seed"] for s in result["seeds"]] == [0, 1]
    assert (parallel / "seed1.log").is_file()
    main([*tiny, "--seeds", "0", "--threads", "1", "--out", str(serial)])
    assert json.loads((serial / "seed0.json").read_text())["miou"] == result["seeds"][0]["miou"]
