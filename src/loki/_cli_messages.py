"""How a ``loki`` command speaks: its log lines and warnings on stderr, and its errors in the CLI's words.

The API's messages name Python keywords (``coordinate_system=``); a command's name its options
(``--coordinate-system``), rewritten here for each command.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from contextlib import contextmanager

from ._logging import LokiWarning

#: The option of each command that sets a Python keyword, to word the API's error messages for the CLI.
OPTIONS = {
    "embed": {
        "image_key": "--image-key",
        "coordinate_system": "--coordinate-system",
        "diameter_um": "--diameter-um",
        "trust_checkpoint": "--trust-checkpoint",
        "n_genes": "--n-genes",
        "layer": "--layer",
        "use_raw": "--use-raw",
        "exclude_patterns": "--exclude-patterns",
    },
    "tile": {
        "coordinate_system": "--coordinate-system",
        "microns_per_pixel": "--mpp",
        "tile_um": "--tile-um",
        "spacing_um": "--spacing-um",
        "min_tissue": "--min-tissue",
        "within": "--within",
        "key_added": "--key-added",
    },
    "slide": {"microns_per_pixel": "--mpp", "name": "--name", "series": "--series"},
    "visium": {"dataset_id": "--name", "fullres_image_file": "--fullres-image", "bin_size": "--bin-size"},
    "st": {
        # read_legacy_st's arguments: the command's positional ones
        "counts": "COUNTS",
        "spots": "SPOTS",
        "image": "IMAGE",
        "name": "--name",
        "spot_diameter_um": "--spot-diameter-um",
        "array_step_um": "--array-step-um",
        "image_scale": "--image-scale",
    },
    "align": {
        "input_coordinate_system": "--coordinate-system",
        "coordinate_system": "--aligned-coordinate-system",
        "key_added": "--key-added",
        "use": "--use",
        "image_key": "--image-key",
        "target_image_key": "--target-image-key",
        "max_iter": "--max-iter",
        "method": "--method",
    },
}

#: Hints of the API's messages that name a keyword the command has no option for (regular
#: expressions), and what the CLI says instead: each a whole sentence or clause, never a fragment
#: dropped (what is left around a dropped fragment no longer reads).
API_ONLY_HINTS = {
    "tile": {  # the command has no mask option: its regions (--within) are the way round tinted glass
        r"If it does show glass with a tinted background, pass mask=.+?, or within=\.": (
            "If it does show glass with a tinted background, pass --within a shapes element outlining "
            "the tissue (e.g. annotations), so that only tiles inside it are kept."
        ),
        r"Lower min_tissue=, pass mask=, or check microns_per_pixel= and tile_um=\.": (
            "Lower --min-tissue, or check --mpp and --tile-um."
        ),
    },
    "embed": {
        r"leave them out with exclude_patterns=\((.*)\)\.$": (
            r"leave them out by adding '\\s' and '^$' to --exclude-patterns (a shell needs quotes: "
            r"--exclude-patterns '-' '\\.' '\\s' '^$' for the default and those two)."
        ),
        r", or use_raw=False to keep these and silence this warning\.": (
            ", or go on without it to keep these (the sentences of the cut genes)."
        ),
        r"Pass id_column= \(and symbol_column=\)\.": "Name them in a header line (e.g. gene_id, gene_name).",
        # models: a checkpoint to convert, a file to download, a token, a local folder named like a model
        r"convert it once with (lk\.models\.convert_to_safetensors\(path, trust_checkpoint=True\)) and load "
        r"the \.safetensors file from then on": (
            r"convert it once in Python with \1 and pass the .safetensors file to --model from then on"
        ),
        r"pass its local path: lk\.models\.load\(Path\('\.\.\./([^']+)'\)\)": r"pass its local path: --model .../\1",
        r"pass token= \(an access token with read permission, from ([^)\s]+)\)": (
            r"set the environment variable HF_TOKEN to an access token with read permission (from \1)"
        ),
        r"before starting Python to load it": "before running loki to load it",
        r"pass a Path: lk\.models\.load\(Path\('([^']+)'\)\)": r"pass --model ./\1",
        r"Map them to symbols first with loki\.pp\.map_gene_ids\(adata, mapping\)\.": (
            "Map them to symbols with --gene-map (a table of gene ids and symbols, e.g. Space Ranger's "
            "features.tsv.gz)."
        ),
    },
    "st": {  # lk.io.read_legacy_st's words for its arguments and keywords
        r"with selected_only=True and a 'selected' column such spots are left out": (
            "without --all-spots, spots the spot file does not select are left out"
        ),
        r"read_legacy_st takes \(counts, spots, image\)": "loki st takes COUNTS SPOTS IMAGE ZARR",
        r"Pass a spots x genes table \(e\.g\. counts\.T\)\.": "Write it as a spots x genes table.",
        r"is image_scale right\?": "is --image-scale right?",
    },
    "align": {  # the command aligns onto the target's own coordinates: it has no target_spatial_key=
        r"To align onto the aligned target, pass target_spatial_key=.+?; to keep both": (
            "`loki align` aligns onto the target's spot coordinates (.obsm['spatial']), not its aligned "
            "ones; to keep both"
        ),
        r"is also spatial_key:": "is also the key of the spot coordinates (.obsm['spatial']):",
        r"is also the (source's|target's) embedding \(use\)": r"is also the \1 embedding (--use)",
        r"Pass a larger max_iter\b": "Pass a larger --max-iter",
        r"use=None \(coordinates only\)": "--use none (coordinates only)",
        r"or a larger alpha; partial=True for sections that share only part of their tissue\.": (
            "or, in Python (lk.tl.align), a larger alpha, or partial=True for sections that share only part of "
            "their tissue."
        ),
    },
}


def log_handler() -> logging.Handler:
    """The handler of loki's log lines during a command: ``HH:MM:SS loki: message`` on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s loki: %(message)s", "%H:%M:%S"))
    return handler


@contextmanager
def logging_to_stderr(verbose: bool):
    """Within it, loki's logger writes to the current stderr at INFO (``verbose``) or WARNING level.

    Its handler is added only when the logger has none (a program that set its own keeps it), and on
    the way out the handler is removed and the level put back: commands run one after another in one
    process (``main([...])`` from Python or tests) each log once, to the stderr of their own time.
    """
    logger = logging.getLogger("loki")
    level = logger.level
    handler = None if logger.handlers else log_handler()
    if handler is not None:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        if handler is not None:
            logger.removeHandler(handler)


def one_line_errors() -> tuple[type[Exception], ...]:
    """The errors shown as one line without a traceback (unless ``--verbose``).

    Bad input, missing files, an untrusted checkpoint and memory too small for the request (e.g.
    numpy's ``_ArrayMemoryError``): each says what is wrong. The checkpoint's error class is looked up
    only where its module was imported (only then can it have been raised): importing it imports torch.
    """
    errors = (KeyError, ValueError, OSError, MemoryError)
    loading = sys.modules.get("loki.models._loading")
    return errors if loading is None else (*errors, loading.UntrustedCheckpointError)


def cli_message(err: BaseException, command: str) -> str:
    """The error's message, with the API keywords this command has options for written as those options.

    A keyword is rewritten where it is an argument: ``keyword=value``, ``keyword=`` and "another keyword".
    Hints to pass a keyword the command has no option for are reworded or dropped.
    """
    if isinstance(err, MemoryError):  # numpy's says how much it could not allocate; Python's says nothing
        return f"out of memory{f': {err}' if str(err) else ''}"
    # a KeyError's str() is quoted; an OSError's args are (errno, text)
    message = err.args[0] if len(err.args) == 1 and isinstance(err.args[0], str) else str(err) or repr(err)
    return cli_words(message, command)


def cli_words(message: str, command: str) -> str:
    """``message`` with the API keywords and hints reworded for ``command`` (see :func:`cli_message`).

    The hints' CLI wording is set aside while the keywords are rewritten: a Python call it quotes (e.g.
    ``lk.models.convert_to_safetensors(path, trust_checkpoint=True)``) keeps its keywords.
    """
    reworded: list[str] = []

    def set_aside(match: re.Match, instead: str) -> str:
        reworded.append(match.expand(instead))
        return f"\0{len(reworded) - 1}\0"

    for hint, instead in API_ONLY_HINTS.get(command, {}).items():
        message = re.sub(hint, lambda match, instead=instead: set_aside(match, instead), message)
    for keyword, option in OPTIONS.get(command, {}).items():
        message = re.sub(rf"\b{keyword}=True\b", option, message)
        message = re.sub(rf"\b{keyword}=(?=[\w'\"(\[-])", f"{option} ", message)  # a value follows
        message = re.sub(rf"\b{keyword}=", option, message)
        message = re.sub(rf"\banother {keyword}(?=[.,;]|$)", f"another {option}", message)
    return re.sub(r"\0(\d+)\0", lambda match: reworded[int(match.group(1))], message)


@contextmanager
def user_warnings_logged(command: str):
    """Within it, show each UserWarning as a log line of loki's logger.

    loki points its warnings at the user's line, which on the command line is the console script's
    ``sys.exit(main())``: that file and line say nothing. loki's own (:class:`LokiWarning`) are worded
    for ``command``; other libraries' UserWarnings keep their words and are named by their category
    (``UserWarning: ...``), so that they are not taken for loki's. Other categories take Python's usual
    path, and the previous :func:`warnings.showwarning` is put back on the way out.
    """
    previous = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, UserWarning):
            previous(message, category, filename, lineno, file, line)
            return
        if issubclass(category, LokiWarning):
            text = cli_words(str(message), command)
        else:
            text = f"{category.__name__}: {message}"
        logging.getLogger("loki").warning("%s", text)

    warnings.showwarning = showwarning
    try:
        yield
    finally:
        warnings.showwarning = previous
