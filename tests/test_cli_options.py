"""Options of the command line checked when it is parsed, and what `--help` promises."""

from __future__ import annotations

import pytest

from loki.cli import _parser, main


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--tile-um", "-5", "must be a positive number"),
        ("--tile-um", "nan", "must be a positive number"),
        ("--spacing-um", "0", "must be a positive number"),
        ("--mpp", "-1", "must be a positive number"),
        ("--mpp", "inf", "must be a positive number"),
        ("--min-tissue", "1.5", "must be a number from 0 to 1"),
        ("--min-tissue", "-0.1", "must be a number from 0 to 1"),
        ("--min-tissue", "half", "must be a number from 0 to 1"),
    ],
)
def test_tile_refuses_bad_numbers_naming_the_option(tmp_path, capsys, option, value, expected):
    store = tmp_path / "absent.zarr"  # never read: the command line is refused first
    with pytest.raises(SystemExit) as exit_:
        main(["tile", str(store), "--image", "he", option, value])
    assert exit_.value.code == 2  # argparse's usage error
    assert f"argument {option}: {expected}, got {value!r}" in capsys.readouterr().err


def test_tile_accepts_the_range_the_library_accepts(tmp_path):
    args = _parser().parse_args(
        ["tile", str(tmp_path), "--image", "he", "--tile-um", "20", "--spacing-um", "25", "--mpp", "0.5"]
    )
    assert (args.tile_um, args.spacing_um, args.mpp, args.min_tissue) == (20.0, 25.0, 0.5, 0.5)
    for fraction in ("0", "1"):
        assert _parser().parse_args(
            ["tile", str(tmp_path), "--image", "he", "--min-tissue", fraction]
        ).min_tissue == float(fraction)


def test_slide_refuses_a_bad_pixel_size(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["slide", str(tmp_path / "s.tif"), str(tmp_path / "s.zarr"), "--mpp", "0"])
    assert exit_.value.code == 2
    assert "argument --mpp: must be a positive number, got '0'" in capsys.readouterr().err


def test_demo_help_names_every_output(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside the names
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in ("metrics.tsv", "metrics.md", "loki-tiny-mob/"):
        assert name in text, name
