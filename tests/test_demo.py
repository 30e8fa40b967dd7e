from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

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


def test_cli_rejects_unknown_command(capsys):
    with pytest.raises(SystemExit):
        main(["nope"])
    assert "invalid choice" in capsys.readouterr().err
