"""The protocols' splits, and LODO / few-shot end to end on a few tiles of three regions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stmap.bundle import open_bundle
from stmap.errors import InputError
from stmap.model import DamageSegmenter, Normalize, Preprocessing, SegmenterConfig, get_spec
from stmap.train.config import build_config
from stmap.train.datasets import TileData
from stmap.train.loop import Inputs, adapt_fewshot
from stmap.train.lora import LoRALinear
from stmap.train.protocols import plan_tasks, run_regions
from stmap.train.run import run_training
from stmap.train.splits import fewshot_sample
from tests.train.conftest import make_tile_dataset

REGIONS = {"alpha": 6, "beta": 6, "gamma": 6}


def in_memory_data(counts: dict[str, int] = REGIONS) -> TileData:
    """TileData without files: a damaged square on every other tile."""
    ids = [f"{region}_r0_c{i}" for region, n in counts.items() for i in range(n)]
    labels = torch.zeros(len(ids), 128, 128, dtype=torch.uint8)
    labels[::2, :40, :40] = 1
    return TileData(
        tile_ids=ids,
        regions=[tile_id.split("_")[0] for tile_id in ids],
        images=torch.zeros(len(ids), 3, 128, 128, dtype=torch.uint8),
        labels=labels,
        buildings=labels.bool(),
        gsd_m=0.5,
        regions_with_footprints=frozenset(counts),
    )


def config_for(protocol: str, **overrides):
    values = {"protocol": protocol, "data_root": "d", "out_dir": "o", "k_folds": 3, **overrides}
    return build_config(values)


def regions_of(data: TileData, index: torch.Tensor) -> set[str]:
    return {data.regions[i] for i in index.tolist()}


def test_fullsup_trains_and_validates_on_every_region():
    data = in_memory_data()
    tasks = plan_tasks(config_for("fullsup"), data)
    assert [t.name for t in tasks] == ["fold0", "fold1", "fold2"]
    validated = torch.cat([t.val for t in tasks])
    assert sorted(validated.tolist()) == list(range(len(data)))  # each tile validated once
    for task in tasks:
        assert task.test is None
        assert set(task.train.tolist()).isdisjoint(task.val.tolist())
        assert regions_of(data, task.train) == regions_of(data, task.val) == set(REGIONS)


def test_ratio_subsamples_the_training_split_keeping_every_region():
    data = in_memory_data({"alpha": 30, "beta": 15})
    full = plan_tasks(config_for("fullsup"), data)
    part = plan_tasks(config_for("ratio", train_ratio=0.2), data)
    for whole, sub in zip(full, part, strict=True):
        assert set(sub.train.tolist()) < set(whole.train.tolist())
        assert len(sub.train) == round(0.2 * len(whole.train))
        assert regions_of(data, sub.train) == {"alpha", "beta"}
        assert torch.equal(sub.val, whole.val)  # scored on the full validation split


def test_lodo_holds_out_each_target_and_scores_its_held_out_fold():
    data = in_memory_data()
    tasks = plan_tasks(config_for("lodo"), data)
    assert [t.name for t in tasks][:4] == [
        "alpha_fold0",
        "alpha_fold1",
        "alpha_fold2",
        "beta_fold0",
    ]
    for task in tasks:
        assert task.target not in regions_of(data, torch.cat([task.train, task.val]))
        assert regions_of(data, task.test) == {task.target}
        assert set(task.sources) == set(REGIONS) - {task.target}
    alpha = [t for t in tasks if t.target == "alpha"]
    assert sorted(torch.cat([t.test for t in alpha]).tolist()) == list(range(6))


def test_lodo_targets_can_be_chosen_and_sources_narrowed():
    data = in_memory_data()
    config = config_for("lodo", source_regions=["alpha", "beta"], target_regions=["gamma"])
    tasks = plan_tasks(config, data)
    assert {t.target for t in tasks} == {"gamma"}
    assert all(t.sources == ("alpha", "beta") for t in tasks)
    assert sorted(run_regions(config)) == ["alpha", "beta", "gamma"]


def test_ssdc_trains_on_the_sources_and_scores_every_other_region():
    data = in_memory_data()
    tasks = plan_tasks(config_for("ssdc", source_regions=["beta"]), data)
    assert len(tasks) == 3
    for task in tasks:
        assert regions_of(data, torch.cat([task.train, task.val])) == {"beta"}
        assert regions_of(data, task.test) == {"alpha", "gamma"}
    with pytest.raises(InputError, match="ssdc: set source_regions"):
        run_regions(config_for("ssdc"))


def test_fewshot_shots_come_from_the_targets_fold_train_pool():
    data = in_memory_data()
    tasks = plan_tasks(config_for("fewshot"), data)
    for task in tasks:
        pool = data.positions(list(task.shot_pool))
        assert regions_of(data, pool) == {task.target}
        assert set(pool.tolist()).isdisjoint(task.test.tolist())
        shots = fewshot_sample(list(task.shot_pool), 3, 0 + task.fold)
        assert len(shots) == 3 and set(shots) <= set(task.shot_pool)


def test_adapt_fewshot_trains_only_lora_and_leaves_the_source_intact(frozen_vit: str):
    data = in_memory_data()
    spec = get_spec(frozen_vit)
    torch.manual_seed(0)
    source = DamageSegmenter(SegmenterConfig(frozen_vit, 128, decoder_channels=16)).eval()
    before = {k: v.clone() for k, v in source.state_dict().items()}
    inputs = Inputs(data, Normalize(Preprocessing(spec.mean, spec.std)), torch.device("cpu"))
    config = config_for("fewshot", backbone=frozen_vit, fewshot_lr=1e-2)
    adapted = adapt_fewshot(source, inputs, torch.tensor([0, 1, 2]), config, fold=0)

    lora = [m for m in adapted.backbone.modules() if isinstance(m, LoRALinear)]
    assert len(lora) == 2 * 4  # qkv, proj, fc1, fc2 in each of the 2 blocks
    assert any(m.lora_B.abs().sum() > 0 for m in lora)  # the LoRA factors learned
    adapted_state = adapted.state_dict()
    for key, value in before.items():
        if key.startswith("decoder."):  # frozen, BatchNorm statistics included
            assert torch.equal(adapted_state[key], value), key
        assert torch.equal(source.state_dict()[key], value), key  # the source is a copy


def test_lodo_end_to_end_reports_every_target(tmp_path: Path):
    root = make_tile_dataset(tmp_path / "data", {"alpha": 4, "beta": 4, "gamma": 4})
    out = tmp_path / "run"
    config = build_config(
        {
            "protocol": "lodo",
            "data_root": root,
            "out_dir": out,
            "backbone": "tiny",
            "decoder_channels": 8,
            "epochs": 1,
            "batch_size": 4,
            "k_folds": 2,
            "overlays": 1,
        }
    )
    run_training(config)
    report = json.loads((out / "report.json").read_text())
    assert set(report["summary"]["lodo"]["regions"]) == {"alpha", "beta", "gamma"}
    assert report["summary"]["lodo"]["folds"] == {"alpha": 2, "beta": 2, "gamma": 2}
    assert len(list((out / "folds").glob("*.safetensors"))) == 6
    assert report["selected"]["val_miou"] == max(t["val_miou"] for t in report["tasks"])


def test_fewshot_end_to_end_merges_lora_into_the_bundle(frozen_vit: str, tmp_path: Path):
    root = make_tile_dataset(tmp_path / "data", {"alpha": 4, "beta": 4})
    out = tmp_path / "run"
    config = build_config(
        {
            "protocol": "fewshot",
            "data_root": root,
            "out_dir": out,
            "backbone": frozen_vit,
            "weights": "random",
            "decoder_channels": 8,
            "epochs": 1,
            "batch_size": 4,
            "k_folds": 2,
            "fewshot_n": [1, 2],
            "overlays": 1,
        }
    )
    bundle = open_bundle(run_training(config))
    report = json.loads((out / "report.json").read_text())
    assert list(report["summary"]) == ["0-shot", "1-shot", "2-shot"]
    assert report["selected"]["fewshot_shots"] == 2
    assert any("one head is kept" in item for item in report["differences"])
    lora = load_file(out / "folds" / "alpha_fold0_2shot.lora.safetensors")
    assert lora and all(k.endswith(("lora_A", "lora_B")) for k in lora)
    shots = report["tasks"][0]["adapted"][1]["tiles"]
    assert len(shots) == 2 and all(s.startswith("alpha_") for s in shots)
    model = bundle.load_segmenter()  # merged: plain Linear layers, the base architecture
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert "adapted with 2" in bundle.manifest.provenance["trained_on"]
