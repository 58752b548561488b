"""Every use of Lightning's private API, in one place.

`lightning` is pinned below its next minor release (pyproject.toml); tests/test_lightning_compat.py checks each
entry of PRIVATE against the installed Lightning, so an upgrade that moves one fails there, by name, instead of
in the middle of a fit. Nothing else in finscale touches a Lightning name that starts with an underscore.
"""

from __future__ import annotations

import typing
from collections.abc import Callable

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

# what finscale uses → why (the test checks that each exists, with these parameters where it is a method)
PRIVATE = {
    "LightningCLI._prepare_subcommand_parser(self, klass, subcommand, **kwargs)": "the help of --ckpt_path",
    "LightningCLI._parse_ckpt_path(self)": "resolve `--ckpt_path last` and check the checkpoint before Lightning "
    "reads its hyperparameters",
    "LightningCLI._run_subcommand(self, subcommand)": "a setting Lightning refuses only once training starts: the "
    "run folder is removed and the error is one line",
    "EarlyStopping._evaluate_stopping_criteria(self, current)": "DecayEarlyStopping: a plateau starts the "
    "learning-rate decay instead of ending the run",
    "_FitLoop._combined_loader": "the batch finder rebuilds the train loader with its micro-batch",
    "LightningModule._trainer": "whether a module is attached to a trainer (`module.trainer` raises when not)",
    "Trainer.__init__.__annotations__": "limit_*_batches and friends read as whole batch counts (below)",
}


class CompatCLI(LightningCLI):
    """LightningCLI whose private steps go through three public hooks, each a no-op here: `adjust_parser`,
    `load_ckpt_hparams(load)` and `run_subcommand(subcommand, run)` (the latter two call what they are given)."""

    def adjust_parser(self, parser: LightningArgumentParser, subcommand: str) -> None:
        """Each subcommand's parser, once Lightning added the method's own arguments (`ckpt_path`)."""

    def load_ckpt_hparams(self, load: Callable[[], None]) -> None:
        """`load()` replaces the config's model with `--ckpt_path`'s hyperparameters."""
        load()

    def run_subcommand(self, subcommand: str, run: Callable[[], None]) -> None:
        """`run()` runs the subcommand (trainer.fit, …) with the instantiated classes."""
        run()

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        self.adjust_parser(parser, subcommand)
        return parser

    def _parse_ckpt_path(self) -> None:
        self.load_ckpt_hparams(super()._parse_ckpt_path)

    def _run_subcommand(self, subcommand: str) -> None:
        self.run_subcommand(subcommand, lambda: super(CompatCLI, self)._run_subcommand(subcommand))


class CompatEarlyStopping(EarlyStopping):
    """EarlyStopping whose stopping decision goes through a public hook, `decide` (default: Lightning's)."""

    def decide(self, current, should_stop: bool, reason: str | None) -> tuple[bool, str | None]:
        """Lightning's decision for the monitored value `current` → the one to act on."""
        return should_stop, reason

    def _evaluate_stopping_criteria(self, current):
        return self.decide(current, *super()._evaluate_stopping_criteria(current))


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The module's trainer, or None when it has none (a bare module in a test, a module being built)."""
    return module._trainer


def rebuild_train_loader(trainer: pl.Trainer) -> None:
    """Build the fit's train loader again (the datamodule's batch size changed after Lightning built it)."""
    trainer.fit_loop._combined_loader = None
    trainer.fit_loop.setup_data()


def whole_numbers_stay_batch_counts() -> None:
    """Trainer annotates limit_*_batches, val_check_interval and overfit_batches as Optional[Union[int, float]]
    (int: batches, float: a fraction). typing caches unions by set equality, so when another library (rich) made
    Optional[Union[float, int]] first, Lightning's annotation IS that object and jsonargparse, trying float first,
    reads `limit_train_batches: 2` as 2.0 and `1` as 1.0 (all batches), depending on import order. `int | float |
    None` is a new, uncached union in that order: int is tried first whatever was imported before."""
    hints = pl.Trainer.__init__.__annotations__
    for name, hint in hints.items():
        if typing.get_origin(hint) is typing.Union and set(typing.get_args(hint)) == {int, float, type(None)}:
            hints[name] = int | float | None
