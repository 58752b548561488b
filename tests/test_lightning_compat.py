"""Lightning's private API, used in common/lightning_compat.py only: each entry of its PRIVATE table exists in the
installed Lightning with the parameters finscale calls it with, and no other module names one of them. An upgrade
that moves one fails here by name (lightning is pinned below its next minor release in pyproject.toml)."""

from __future__ import annotations

import inspect
import re

import lightning.pytorch as pl
import pytest
from conftest import ROOT
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loops.fit_loop import _FitLoop

from common.lightning_compat import PRIVATE

OWNERS = {"LightningCLI": LightningCLI, "_FitLoop": _FitLoop, "LightningModule": pl.LightningModule,
          "Trainer": pl.Trainer}  # fmt: skip
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


def test_no_other_module_names_a_private_lightning_attribute():
    names = {ENTRY.match(entry)["name"] for entry in PRIVATE} - {"__init__"} | {"_get_file_writer"}
    offenders = []
    for path in ROOT.glob("[a-z]*/**/*.py"):
        if path.parts[len(ROOT.parts)] in ("tests", "bench") or ".venv" in path.parts:
            continue
        if path == ROOT / "common" / "lightning_compat.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if re.search(rf"\.{n}\b", text)]
    assert not offenders
