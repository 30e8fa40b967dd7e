"""Options of the command line checked when it is parsed, and what `--help` promises."""

from __future__ import annotations

import numpy as np
import pytest

from loki._cli_parser import build_parser
from loki.cli import main


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
    args = build_parser().parse_args(
        ["tile", str(tmp_path), "--image", "he", "--tile-um", "20", "--spacing-um", "25", "--mpp", "0.5"]
    )
    assert (args.tile_um, args.spacing_um, args.mpp, args.min_tissue) == (20.0, 25.0, 0.5, 0.5)
    for fraction in ("0", "1"):
        assert build_parser().parse_args(
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


def _commands() -> dict:
    import argparse

    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"loki": parser, **sub.choices}


def test_help_is_plain_text_and_describes_every_option(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    for name, parser in _commands().items():
        assert "``" not in parser.format_help(), name  # no reStructuredText markup
        for action in parser._actions:
            if action.option_strings:
                assert action.help, f"{name} {action.option_strings[-1]} has no help text"


@pytest.mark.parametrize("before", [True, False])
def test_verbose_is_taken_before_or_after_the_command(tmp_path, before):
    command = ["tile", str(tmp_path), "--image", "he"]
    assert build_parser().parse_args(["-v", *command] if before else [*command, "-v"]).verbose
    assert not build_parser().parse_args(command).verbose
    assert build_parser().parse_args(["--verbose", "demo"] if before else ["demo", "--verbose"]).verbose


@pytest.fixture
def png(tmp_path):
    from PIL import Image

    path = tmp_path / "he.png"
    Image.fromarray(np.full((40, 60, 3), 240, dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--series", "3"], "loki slide: --series 3: he.png is not a TIFF and holds one image."),
        (["--name", "a b"], "loki slide: --name 'a b' is not a valid SpatialData element name"),
    ],
)
def test_slide_errors_name_the_options(png, tmp_path, option, expected):
    store = tmp_path / "s.zarr"
    with pytest.raises(SystemExit) as exit_:
        main(["slide", str(png), str(store), "--mpp", "2", *option])
    assert str(exit_.value.code).startswith(expected)
    assert not store.exists()


def test_user_warnings_are_log_lines_worded_for_the_command(monkeypatch, caplog):
    """loki's warnings in a command are log lines naming its options; other categories take Python's path."""
    import logging
    import warnings

    import loki as lk
    import loki.cli

    def run(args):
        warnings.warn("no image found (pass target_image_key= to name it)", lk.LokiWarning, stacklevel=2)
        warnings.warn("an old default", DeprecationWarning, stacklevel=2)

    monkeypatch.setattr(loki.cli, "_run", run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shown = warnings.showwarning
        assert main(["align", "store.zarr", "--source", "a", "--target", "b"]) == 0
        assert warnings.showwarning is shown  # put back for the caller of main
    assert [w.category for w in caught] == [DeprecationWarning]
    (record,) = (r for r in caplog.records if r.name == "loki")
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "no image found (pass --target-image-key to name it)"


class ImplicitModificationWarning(UserWarning):
    """A UserWarning of another library's own kind, as anndata's."""


@pytest.mark.parametrize("category", [UserWarning, ImplicitModificationWarning])
def test_other_libraries_user_warnings_are_named_and_keep_their_words(monkeypatch, caplog, category):
    """A UserWarning from another library is logged after its category, its keywords left as they are."""
    import types

    import loki.cli

    other = types.ModuleType("otherlib")  # a library outside loki, warning at its caller's line
    code = (
        "import warnings\ndef read(category):\n    warnings.warn('pass image_key= to read it', category, 2)\n"
    )
    exec(compile(code, "/site-packages/otherlib/__init__.py", "exec"), vars(other))
    monkeypatch.setattr(loki.cli, "_run", lambda args: other.read(category))
    assert main(["embed", "store.zarr", "--table", "t"]) == 0
    (record,) = (r for r in caplog.records if r.name == "loki")
    assert record.getMessage() == f"{category.__name__}: pass image_key= to read it"


def test_warnings_are_shown_as_before_once_a_command_fails(monkeypatch):
    import warnings

    import loki.cli

    def run(args):
        raise ValueError("bad")

    monkeypatch.setattr(loki.cli, "_run", run)
    shown = warnings.showwarning
    with pytest.raises(SystemExit, match="loki align: bad"):
        main(["align", "store.zarr", "--source", "a", "--target", "b"])
    assert warnings.showwarning is shown


def test_help_shows_every_default(monkeypatch):
    """Each option's help names its default, where it has one (not None, not a flag's False)."""
    import argparse

    for name, parser in _commands().items():
        for action in parser._actions:
            default = action.default
            if not action.option_strings or default in (None, False, argparse.SUPPRESS):
                continue
            text = action.help % {**vars(action), "prog": parser.prog}  # as --help expands it
            shown = {str(default), f"{default:g}" if isinstance(default, float) else str(default)}
            assert "default" in text, f"{name} {action.option_strings[-1]}: {text}"
            assert any(value in text for value in shown), f"{name} {action.option_strings[-1]}: {text}"


def test_embed_batch_size_help_says_it_applies_to_texts_too():
    import re

    (action,) = (a for a in _commands()["embed"]._actions if "--batch-size" in a.option_strings)
    assert re.search(r"sentences", action.help)
    assert "lk.tl.embed_text defaults to 512" in action.help


def test_version(capsys):
    import loki as lk

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"loki {lk.__version__}\n"


# (command line, option's dest, the function and keyword it stands for): the parser repeats these
# defaults as literals so that `loki --help` does not import the tools; this keeps the copies equal.
_MIRRORED_DEFAULTS = [
    (["st", "c", "s", "i", "z"], "spot_diameter_um", "io.read_legacy_st", "spot_diameter_um"),
    (["st", "c", "s", "i", "z"], "array_step_um", "io.read_legacy_st", "array_step_um"),
    (["st", "c", "s", "i", "z"], "image_scale", "io.read_legacy_st", "image_scale"),
    (["tile", "z", "--image", "i"], "tile_um", "pp.tile_image", "tile_um"),
    (["tile", "z", "--image", "i"], "spacing_um", "pp.tile_image", "spacing_um"),
    (["tile", "z", "--image", "i"], "grid", "pp.tile_image", "grid"),
    (["tile", "z", "--image", "i"], "min_tissue", "pp.tile_image", "min_tissue"),
    (["tile", "z", "--image", "i"], "key_added", "pp.tile_image", "key_added"),
    (["embed", "z", "--table", "t"], "n_genes", "pp.gene_sentences", "n_genes"),
    (["embed", "z", "--table", "t"], "housekeeping", "pp.gene_sentences", "housekeeping"),
    (["embed", "z", "--table", "t"], "layer", "pp.gene_sentences", "layer"),
    (["embed", "z", "--table", "t"], "batch_size", "tl.embed_image", "batch_size"),
    (["embed", "z", "--table", "t"], "coordinate_system", "tl.embed_image", "coordinate_system"),
    (["embed", "z", "--table", "t"], "diameter_um", "tl.embed_image", "diameter_um"),
    (["slide", "f", "z"], "series", "io.read_slide", "series"),
    (["slide", "f", "z"], "name", "io.read_slide", "name"),
    (["slide", "f", "z"], "mpp", "io.read_slide", "microns_per_pixel"),
    (["align", "z", "--source", "a", "--target", "b"], "use", "tl.align", "use"),
    (["align", "z", "--source", "a", "--target", "b"], "method", "tl.align", "method"),
    (["align", "z", "--source", "a", "--target", "b"], "key_added", "tl.align", "key_added"),
    (
        ["align", "z", "--source", "a", "--target", "b"],
        "coordinate_system",
        "tl.align",
        "input_coordinate_system",
    ),
    (["align", "z", "--source", "a", "--target", "b"], "max_iter", "tl.align", "max_iter"),
    (["align", "z", "--source", "a", "--target", "b"], "seed", "tl.align", "seed"),
]


@pytest.mark.parametrize(
    ("argv", "dest", "function", "keyword"),
    _MIRRORED_DEFAULTS,
    ids=[f"{argv[0]}-{dest}" for argv, dest, *_ in _MIRRORED_DEFAULTS],
)
def test_cli_defaults_equal_the_api_defaults(argv, dest, function, keyword):
    import inspect
    import operator

    import loki as lk

    args = build_parser().parse_args(argv)
    func = operator.attrgetter(function)(lk)
    assert getattr(args, dest) == inspect.signature(func).parameters[keyword].default


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["embed"], "loki embed: out of memory: Unable to allocate 43.8 PiB for an array"),
        (["align"], "loki align: out of memory"),
    ],
)
def test_out_of_memory_is_one_line(monkeypatch, command, expected):
    import loki.cli

    def run(args):
        raise MemoryError(expected.partition("out of memory: ")[2])  # numpy's says how much; Python's nothing

    monkeypatch.setattr(loki.cli, "_run", run)
    argv = {
        "embed": ["store.zarr", "--table", "t"],
        "align": ["store.zarr", "--source", "a", "--target", "b"],
    }
    with pytest.raises(SystemExit) as exit_:
        main([*command, *argv[command[0]]])
    assert str(exit_.value.code) == expected
    with pytest.raises(MemoryError):  # --verbose shows the traceback
        main([*command, *argv[command[0]], "-v"])


def test_align_key_added_errors_name_the_options():
    """The API's "is also spatial_key" and "(use)" are worded for the command, which has --use only."""
    from loki._cli_messages import cli_message
    from loki.tl._align import _check_key_added

    for key, expected in (
        ("spatial", "--key-added 'spatial' is also the key of the spot coordinates (.obsm['spatial']): "),
        ("loki_text", "--key-added 'loki_text' is also the source's embedding (--use): "),
    ):
        with pytest.raises(ValueError, match="is also") as err:
            _check_key_added(key, "spatial", ("loki_text", "loki_text"))
        message = cli_message(err.value, "align")
        assert message.startswith(expected), message
        assert message.endswith("Choose another --key-added."), message


@pytest.fixture
def demo_runs(monkeypatch):
    """Replace the demo by a stub that records the folders it was asked to write into."""
    import pandas as pd

    import loki._demo

    class Runs(list):
        progress = None  # of the last run

    runs = Runs()

    def run_demo(out, **kwargs):
        runs.append(out)
        runs.progress = kwargs["progress"]
        return pd.DataFrame({"metric": ["x"], "value": [1.0]})

    monkeypatch.setattr(loki._demo, "run_demo", run_demo)
    return runs


@pytest.mark.parametrize(
    ("tty", "options", "progress"), [(True, [], True), (True, ["--no-progress"], False), (False, [], False)]
)
def test_demo_shows_progress_bars_only_on_a_terminal(
    tmp_path, demo_runs, monkeypatch, tty, options, progress
):
    """A bar redrawn ten times a second is noise in a batch job's log (stderr a file)."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    assert main(["demo", "--out", str(tmp_path / "out"), *options]) == 0
    assert demo_runs.progress is progress


def test_demo_refuses_a_folder_with_earlier_results_unless_overwrite(tmp_path, demo_runs):
    out = tmp_path / "results"
    out.mkdir()
    (out / "metrics.tsv").write_text("earlier\n")
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--out", str(out)])
    assert str(exit_.value.code) == (
        f"loki demo: --out {str(out)!r} holds files (metrics.tsv), e.g. an earlier run's results; pass "
        "--overwrite to write over them, or another --out."
    )
    assert demo_runs == []
    assert main(["demo", "--out", str(out), "--overwrite"]) == 0
    empty, new = tmp_path / "empty", tmp_path / "new"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"")  # hidden files are no earlier results
    assert main(["demo", "--out", str(empty)]) == 0
    assert main(["demo", "--out", str(new)]) == 0
    assert demo_runs == [out, empty, new]


@pytest.mark.parametrize(
    ("signum", "code", "word"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")]
)
def test_a_signal_ends_a_command_in_one_line_after_its_clean_up(monkeypatch, capsys, signum, code, word):
    """Ctrl-C, `timeout` and a batch scheduler's time limit run the command's clean-up (see test_cli)."""
    import os
    import signal
    import time

    import loki.cli

    def run(args):
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signum == "SIGTERM":
            pytest.fail("SIGTERM would end the process at once, leaving a store half written")
        os.kill(os.getpid(), getattr(signal, signum))
        time.sleep(5)

    monkeypatch.setattr(loki.cli, "_run", run)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_:
        main(["tile", "store.zarr", "--image", "he"])
    assert exit_.value.code == code
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"loki tile: {word}"
    assert signal.getsignal(signal.SIGTERM) is before  # put back


def test_help_version_and_usage_errors_load_no_scientific_library():
    """`loki --help`, `--version` and usage errors answer at once (they took 3 to 4 s importing the whole
    stack): the CLI module, its parser and the console script's entry point import none of it."""
    import json
    import subprocess
    import sys

    code = """
import contextlib, io, json, sys
from importlib.metadata import entry_points

heavy = ("anndata", "dask", "numpy", "pandas", "scanpy", "spatialdata", "torch")
loaded = lambda: sorted(m for m in heavy if m in sys.modules)
import loki.cli
seen = {"import loki.cli": loaded()}
(script,) = entry_points(group="console_scripts", name="loki")
seen["entry point"] = [script.value, script.load() is loki.cli.main]
for argv in (["--help"], ["--version"], ["embed", "--help"], ["align", "--bogus"], []):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            loki.cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code
    seen[" ".join(argv)] = [code, loaded()]
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {
        "import loki.cli": [],
        "entry point": ["loki.cli:main", True],
        "--help": [0, []],
        "--version": [0, []],
        "embed --help": [0, []],
        "align --bogus": [2, []],
        "": [2, []],
    }, out.stderr


def test_embed_help_names_the_default_exclude_patterns_of_gene_sentences():
    import inspect

    import loki as lk
    from loki.cli import _sentence_options

    default = inspect.signature(lk.pp.gene_sentences).parameters["exclude_patterns"].default
    (action,) = (a for a in _commands()["embed"]._actions if "--exclude-patterns" in a.option_strings)
    assert f"(default: {' '.join(default)}, the reference recipe" in action.help
    args = build_parser().parse_args(["embed", "store.zarr", "--table", "t"])
    assert _sentence_options(args)["exclude_patterns"] == default


def test_the_whitespace_name_error_names_the_option_in_shell_words():
    """``exclude_patterns=('-', '\\.', ...)`` reached the command line as a Python tuple after the option."""
    import anndata as ad
    import numpy as np

    import loki as lk
    from loki._cli_messages import cli_message

    adata = ad.AnnData(np.ones((2, 3), np.float32))
    adata.var_names = ["Apoe", "Snap25 x", "Mbp"]
    with pytest.raises(ValueError, match="hold whitespace") as err:
        lk.pp.gene_sentences(adata, housekeeping=None)
    message = cli_message(err.value, "embed")
    assert "('-'" not in message
    assert "exclude_patterns" not in message
    assert "--exclude-patterns '-' '\\.' '\\s' '^$'" in message
