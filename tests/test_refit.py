"""``proad-train --from``: a trained decoder read another way without training it again. A refit with
nothing changed rewrites the same model; one that adds, changes or removes the memory, or sets another
false-alarm rate, writes what ``proad-train`` would have with those settings and the same decoder;
anything that would need training, and data that no longer match the checkpoint, are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from proad.checkpoint import Checkpoint, CheckpointError, build_model, load_checkpoint, save_checkpoint
from proad.config import ModelConfig, TrainConfig
from proad.data.folder import MVTecFolder
from proad.refit import RefitError, refit
from proad.train import train

QUIET = {"progress": False, "log": lambda s: None}


@pytest.fixture(scope="module")
def trained(small_cfg: ModelConfig, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same few training steps twice: without a memory, and with one (the decoders are the same:
    the memory is filled after the last step)."""
    out = tmp_path_factory.mktemp("refit")
    train_cfg = TrainConfig(iterations=3, batch_size=4, warmup=1, holdout_fraction=0.25)
    paths = {"plain": out / "plain.pt", "memory": out / "memory.pt"}
    train([tiny_data], paths["plain"], small_cfg, train_cfg, **QUIET)
    with_memory = ModelConfig.model_validate({**small_cfg.model_dump(), "memory_size": 48, "memory_stride": 8})
    train([tiny_data], paths["memory"], with_memory, train_cfg, **QUIET)
    return paths


def _decoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("memory_")}


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """The same weights and memory bank (exactly: a refit copies the decoder, and the bank is chosen
    from the frozen encoder's features); the fusion statistics up to float rounding (they are sums
    over maps, which a trained model's tensors and loaded ones can add in another order)."""
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a if k != "memory_stats"):
        return False
    return "memory_stats" not in a or torch.allclose(a["memory_stats"], b["memory_stats"], rtol=1e-6)


def _same_decoder(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Two trainings with the same seed and data: the same decoder (CPU training is deterministic at one
    thread count; allowed the rounding of another summation order)."""
    da, db = _decoder(a), _decoder(b)
    return da.keys() == db.keys() and all(torch.allclose(da[k], db[k], rtol=1e-5, atol=1e-7) for k in da)


def _same_thresholds(a: Checkpoint, b: Checkpoint) -> None:
    """Equal up to float rounding: the same weights score the same pictures, but a trained model's
    tensors and loaded ones can sum in another order (1e-9 apart on the shared sets)."""
    assert a.threshold == pytest.approx(b.threshold, rel=1e-5)
    assert a.train_info["category_thresholds"] == pytest.approx(b.train_info["category_thresholds"], rel=1e-5)


def _untimed(memory: dict) -> dict:
    return {k: v for k, v in memory.items() if k not in ("seconds", "fusion_source")}


def _score(path: Path, tiny_data: Path) -> float:
    model = build_model(load_checkpoint(path))
    folder = MVTecFolder(tiny_data, "board")
    image = torch.from_numpy(np.stack([folder.image(p) for p in folder.test[:1]]))
    with torch.no_grad():
        return float(model(image)[1][0])


def test_a_refit_that_changes_nothing_rewrites_the_same_model(trained: dict[str, Path], tmp_path: Path) -> None:
    for name, path in trained.items():
        before = load_checkpoint(path)
        after = refit(path, tmp_path / f"{name}.pt", **QUIET)
        assert _same_tensors(after.state_dict, before.state_dict)  # the memory's bank and weights too
        _same_thresholds(after, before)
        if before.train_info["memory"] is None:
            assert after.train_info["memory"] is None
        else:
            assert _untimed(after.train_info["memory"]) == pytest.approx(_untimed(before.train_info["memory"]))
        assert after.train_info["refit"]["changed"] == {}
        assert after.train_info["refit"]["from_sha256"] == before.sha256


def test_a_refit_adds_or_removes_the_memory_with_the_decoder_kept(
    trained: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    plain, memory = load_checkpoint(trained["plain"]), load_checkpoint(trained["memory"])
    added = refit(trained["plain"], tmp_path / "added.pt", {"memory_size": 48, "memory_stride": 8}, **QUIET)
    # what proad-train wrote with the memory from the start: the same bank, fusion and thresholds
    assert _same_decoder(plain.state_dict, memory.state_dict)  # the premise: the memory changes no training
    assert torch.equal(added.state_dict["memory_bank"], memory.state_dict["memory_bank"])
    assert torch.allclose(added.state_dict["memory_stats"], memory.state_dict["memory_stats"], rtol=1e-5)
    assert _same_tensors(_decoder(added.state_dict), _decoder(plain.state_dict))  # the decoder copied
    _same_thresholds(added, memory)
    assert added.train_info["refit"]["changed"] == {"memory_size": 48, "memory_stride": 8}
    assert _score(tmp_path / "added.pt", tiny_data) == pytest.approx(_score(trained["memory"], tiny_data))

    removed = refit(trained["memory"], tmp_path / "removed.pt", {"memory_size": 0}, **QUIET)
    assert _same_tensors(removed.state_dict, _decoder(memory.state_dict)) and removed.train_info["memory"] is None
    _same_thresholds(removed, plain)

    smaller = refit(trained["memory"], tmp_path / "smaller.pt", {"memory_size": 24}, **QUIET)
    assert smaller.state_dict["memory_bank"].shape[0] == 24 and smaller.train_info["memory"]["bank"] == 24
    assert _same_tensors(_decoder(smaller.state_dict), _decoder(memory.state_dict))
    assert smaller.threshold != memory.threshold  # another map, calibrated again
    build_model(load_checkpoint(tmp_path / "smaller.pt"))  # loads, its bank filled


def test_a_refit_recalibrates_for_another_false_alarm_rate(trained: dict[str, Path], tmp_path: Path) -> None:
    before = load_checkpoint(trained["plain"])
    after = refit(trained["plain"], tmp_path / "strict.pt", target_false_alarm=0.001, **QUIET)
    assert after.train_info["train_config"]["target_false_alarm"] == 0.001
    assert "0.10% target false alarms" in after.train_info["threshold_source"]
    per_before, per_after = before.train_info["category_thresholds"], after.train_info["category_thresholds"]
    assert per_after.keys() == per_before.keys()
    assert all(per_after[c] > per_before[c] for c in per_before)  # rejecting fewer normal parts: higher
    assert _same_tensors(after.state_dict, before.state_dict)


def test_what_needs_training_and_changed_data_are_refused(
    trained: dict[str, Path], tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from proad.cli import train_main

    out = tmp_path / "new.pt"
    base = ["--from", str(trained["plain"]), "--out", str(out), "--quiet"]
    assert train_main([*base, "--set", "prototypes=32"]) == 2
    assert "changes only how the map is read (memory_size" in capsys.readouterr().err
    for flag in (["--iterations", "10"], ["--seed", "0"], ["--holdout-fraction", "0"], ["--preset", "fast"],
                 ["--categories", "board"], ["--resume"]):  # fmt: skip
        assert train_main([*base, *flag]) == 2, flag
        assert f"{flag[0]} cannot apply" in capsys.readouterr().err
    assert train_main([*base, "--set", "memory_size=-1"]) == 2
    assert "memory_size" in capsys.readouterr().err
    assert train_main([*base, "--threads", "0"]) == 2
    assert "threads" in capsys.readouterr().err
    assert train_main(["--from", str(trained["plain"]), "--out", str(trained["plain"]), "--quiet"]) == 2
    assert "write the refit to another file" in capsys.readouterr().err
    assert train_main(["--out", str(out), "--quiet"]) == 2
    assert "--data is required" in capsys.readouterr().err
    with pytest.raises(RefitError, match="dim need training"):
        refit(trained["plain"], out, {"dim": 64}, **QUIET)
    bare = tmp_path / "bare.pt"  # a checkpoint proad-train did not write: no record of its training
    ckpt = load_checkpoint(trained["plain"])
    save_checkpoint(Checkpoint(ckpt.model_config, ckpt.state_dict, ckpt.threshold), bare)
    with pytest.raises(RefitError, match="does not record its training data"):
        refit(bare, out, **QUIET)

    more = tmp_path / "more"  # one training picture more
    shutil.copytree(tiny_data, more)
    first = sorted((more / "board" / "train" / "good").iterdir())[0]
    shutil.copy(first, first.with_name("extra" + first.suffix))
    assert train_main([*base, "--data", str(more)]) == 2
    err = capsys.readouterr().err
    assert "board: 10 fitted + 3 held-out training pictures" in err and "trained on 9 + 3: the data changed" in err
    other = tmp_path / "other"  # as many pictures, one of them another file
    shutil.copytree(tiny_data, other)
    first = sorted((other / "board" / "train" / "good").iterdir())[0]
    first.rename(first.with_name("renamed" + first.suffix))
    with pytest.raises(RefitError, match=r"board: its training pictures .* are not the ones"):
        refit(trained["plain"], out, roots=[other], **QUIET)
    assert not out.exists()
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        refit(tmp_path / "none.pt", out, **QUIET)


def test_roots_given_in_another_order_refit_the_same_model(
    trained: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    roots = []
    for category in ("marble", "board"):  # one root per category, named in the other order than trained
        root = tmp_path / category
        shutil.copytree(tiny_data / category, root / category)
        roots.append(root)
    before = load_checkpoint(trained["memory"])
    after = refit(trained["memory"], tmp_path / "moved.pt", roots=roots, **QUIET)
    assert list(after.train_info["categories"]) == list(before.train_info["categories"])
    assert _same_tensors(after.state_dict, before.state_dict)  # the same bank: the cache in training's order
    _same_thresholds(after, before)


def test_the_command_line_refit_writes_a_model_from_the_recorded_data(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from proad.cli import train_main

    out = tmp_path / "cli.pt"
    args = ["--from", str(trained["plain"]), "--out", str(out), "--quiet", "--set", "memory_size=48",
            "memory_stride=8", "--target-false-alarm", "0.02"]  # fmt: skip
    assert train_main(args) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    assert ckpt.model_config.memory_size == 48 and ckpt.train_info["memory"]["bank"] == 48
    assert ckpt.train_info["refit"]["changed"] == {"memory_size": 48, "memory_stride": 8, "target_false_alarm": 0.02}


def test_the_readings_benchmark_scores_a_refit_as_the_model_trained_with_that_reading(
    trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    import refit_readings

    written: dict[str, object] = {}
    monkeypatch.setattr(refit_readings, "write_results", lambda name, data, table, show=True: written.update(
        name=name, data=data, table=table))  # fmt: skip
    memory = '{"memory_size": 48, "memory_stride": 8}'
    args = ["--checkpoint", str(trained["plain"]), "--reading", "{}", memory, "--name", "t"]
    assert refit_readings.main(args) == 0
    runs = written["data"]["runs"][str(trained["plain"])]  # type: ignore[index]
    as_trained = refit_readings.evaluate_reading(trained["memory"], {})  # the model trained with the memory
    refitted = runs['{"memory_size": 48, "memory_stride": 8}']
    for category, want in as_trained["categories"].items():
        got = refitted["categories"][category]
        for metric in (*refit_readings.METRICS, "missed_at_threshold", "false_alarms_at_threshold"):
            assert got[metric] == pytest.approx(want[metric], abs=1e-6), (category, metric)
    assert runs["as trained"]["categories"]["board"]["image_auroc"] is not None
    assert "| as trained |" in written["table"] and "Change against `as trained`" in written["table"]  # type: ignore[operator]
