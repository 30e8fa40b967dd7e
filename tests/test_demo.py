from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

import loki as lk
from loki.cli import main


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--no-progress"]) == 0
    assert "figures and metrics written" in capsys.readouterr().out

    table = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert set(table["step"]) == {"train", "retrieve", "predex", "align", "decompose", "demo"}
    assert np.isfinite(table["value"]).all()
    # every evaluation row is reported beside a baseline measured in the same run
    evaluated = table[table["step"].isin(["retrieve", "predex", "align", "decompose"])]
    assert (evaluated["baseline"].fillna("") != "").all()
    assert np.isfinite(evaluated["baseline_value"]).all()
    assert (out / "metrics.md").read_text().startswith("quick smoke run")

    for name in (
        "loss_curve.png",
        "retrieval_gallery.png",
        "predex_mob4.png",
        "alignment_mob2_mob1.png",
        "alignment_he_mob4_mob3.png",
        "proportions_synthetic.png",
    ):
        img = imread(out / name)
        assert img.shape[0] > 100
        assert img.shape[1] > 100
        assert img[..., :3].std() > 0.01, f"{name} is blank"
    assert (out / "loki-tiny-mob" / "model.safetensors").exists()
    # the saved model knows the patch size it was trained on, so `loki embed` cuts the same
    assert lk.models.load(out / "loki-tiny-mob", device="cpu").patch_um == lk.models.TINY_PATCH_UM

    # numbers depend on torch's thread count: the run records it
    import torch

    threads = table.loc[table["metric"] == "torch CPU threads", "value"]
    assert threads.tolist() == [torch.get_num_threads()]
    assert (
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)"
        in (out / "metrics.md").read_text()
    )


def test_bad_seed_or_output_path_fail_before_any_work(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(SystemExit, match=r"^loki demo: '.*a_file' exists and is not a folder"):
        main(["demo", "--out", str(a_file), "--quick"])
    out = tmp_path / "demo"
    for seed in ("-1", str(2**32)):
        with pytest.raises(
            SystemExit, match=rf"^loki demo: seed must be an integer from 0 to 4294967295, got {seed}$"
        ):
            main(["demo", "--out", str(out), "--seed", seed, "--quick"])
    assert not out.exists()


def test_cli_rejects_unknown_command(capsys):
    with pytest.raises(SystemExit):
        main(["nope"])
    assert "invalid choice" in capsys.readouterr().err
