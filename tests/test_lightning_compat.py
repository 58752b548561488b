"""Lightning's private API, used in common/lightning_compat.py only: each entry of its PRIVATE table exists in the
installed Lightning with the parameters finscale calls it with, and no other module names one of them. An upgrade
that moves one fails here by name (lightning is pinned below its next minor release in pyproject.toml)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
from conftest import ROOT
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loops.fit_loop import _FitLoop

from common.lightning_compat import PRIVATE

OWNERS = {"LightningCLI": LightningCLI, "_FitLoop": _FitLoop, "LightningModule": pl.LightningModule,
          "Trainer": pl.Trainer, "EarlyStopping": EarlyStopping}  # fmt: skip
ENTRY = re.compile(r"(?P<owner>\w+)\.(?P<name>_\w+|__init__)(?:\.(?P<attr>\w+))?(?:\((?P<params>.*)\))?$")


def _instance_attributes(owner: type) -> set[str]:
    """Attributes an instance gets in __init__ (`self.x = …`), read from the source."""
    return set(re.findall(r"self\.(_\w+)\s*(?::[^=]+)?=", inspect.getsource(owner.__init__)))


@pytest.mark.parametrize("entry", sorted(PRIVATE))
def test_each_private_name_finscale_uses_is_where_it_was(entry):
    match = ENTRY.match(entry)
    assert match, f"PRIVATE entry {entry!r} is not `Owner._name[(params)]`"
    owner = OWNERS[match["owner"]]
    name = match["name"]
    if match["attr"]:  # an attribute of a function, e.g. Trainer.__init__.__annotations__
        assert hasattr(getattr(owner, name), match["attr"])
        return
    if match["params"] is None:  # an instance attribute
        assert name in _instance_attributes(owner) or hasattr(owner, name), f"{entry}: gone"
        return
    params = [p.strip().lstrip("*") for p in match["params"].split(",")]
    got = list(inspect.signature(getattr(owner, name)).parameters)
    assert got == params, f"{entry}: Lightning now has ({', '.join(got)})"


def test_the_trainer_annotations_the_patch_rewrites_are_still_int_or_float():
    hint = pl.Trainer.__init__.__annotations__["limit_train_batches"]
    assert set(getattr(hint, "__args__", ())) == {int, float, type(None)}


COMPAT = {Path("common/lightning_compat.py"), Path("hpo/optuna_private.py")}  # Lightning's and Optuna's, in one place
STDLIB_PRIVATE = {"_actions"}  # argparse's list of a parser's options (training/lightning_cli.py: --ckpt_path's help)


def _sources() -> dict[Path, str]:
    """finscale's modules (not tests or benchmarks), by path relative to the repository."""
    paths = [p for p in ROOT.glob("[a-z]*/**/*.py") if p.relative_to(ROOT).parts[0] not in ("tests", "bench", ".venv")]
    return {p.relative_to(ROOT): p.read_text() for p in [*paths, ROOT / "cli.py"]}


def test_no_other_module_uses_a_private_name_it_does_not_define():
    """Every `._name` read outside the compat modules is finscale's own (defined somewhere in finscale)."""
    sources = _sources()
    own = set()
    for text in sources.values():
        own |= set(re.findall(r"(?:def|class) (_\w+)", text))
        own |= set(re.findall(r"(?:self|cls)\.(_\w+)(?=\s*(?:,[^=\n]*|:[^=\n]+)?=(?!=))", text))  # x = …, x, y = …
        own |= set(re.findall(r"^\s*(_\w+)\s*(?::[^=\n]+)?=(?!=)", text, re.M))
    foreign = {f"{path}: {name}" for path, text in sources.items() if path not in COMPAT
               for name in re.findall(r"\.(_[a-zA-Z]\w*)\b", text)
               if not name.startswith("__") and name not in own | STDLIB_PRIVATE}  # fmt: skip
    assert not foreign


def test_no_other_module_overrides_a_private_lightning_method():
    """A method `_name` defined outside the compat module must not be one of Lightning's (an override of its
    internals): those go through common/lightning_compat.py's public hooks."""
    from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary
    from lightning.pytorch.loggers import TensorBoardLogger

    lightning = (LightningCLI, EarlyStopping, ModelCheckpoint, ModelSummary, pl.Callback, pl.LightningModule,
                 pl.LightningDataModule, pl.Trainer, TensorBoardLogger)  # fmt: skip
    overrides = {
        f"{path}: {name}"
        for path, text in _sources().items()
        if path not in COMPAT
        for name in re.findall(r"def (_[a-z]\w*)", text)
        if any(hasattr(c, name) for c in lightning)
    }
    assert not overrides
