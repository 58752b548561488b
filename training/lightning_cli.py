"""The Lightning side of the command line: FinscaleCLI for fit/validate/test/predict and `summary`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from lightning.pytorch.cli import LightningCLI
from omegaconf.errors import OmegaConfBaseException

from common.config_files import base_config, is_saved_run
from common.errors import ConfigError, DataError
from common.files import disk_error, remove_temporaries
from common.lightning_compat import CompatCLI, whole_numbers_stay_batch_counts
from sizing.run_size import preflight
from training.checkpoint_io import atomic_checkpoints
from training.lightning_output import quiet_lightning
from training.run_setup import (
    _one_line,
    _root_data_error,
    check_checkpoint,
    check_config_files,
    config_files,
    name_run,
    resolve_last,
    run_folder,
    size_from_config,
)
from training.trainer_checks import check_trainer

CKPT_HELP = ("a checkpoint written by fit, or `last`: the newest last.ckpt of this experiment's runs with the same "
             "horizon and seed. fit resumes it exactly (same run folder); validate/test/predict evaluate it in a "
             "sub-folder of its run.")  # fmt: skip
USER_ERRORS = (ConfigError, DataError, MisconfigurationException)  # raised by Lightning or finscale for bad settings


whole_numbers_stay_batch_counts()


RUN_CALLBACKS = [{"class_path": f"callbacks.{path}"} for path in (
    "run_record.RunRecordCallback",  # run.json, the HParams record, the best epoch (the report reads them)
    "model_summary.ParameterSummary",  # the parameter table at fit start
    "throughput.ThroughputCallback",  # samples/s and FLOP/s per epoch
    "prediction_writer.PredictionWriter",  # predictions.csv of `predict`
    "fit_summary.FitSummaryCallback",  # fit's closing summary against the baselines
)]  # fmt: skip
RUN_CALLBACKS_HELP = ("callbacks every run has, whatever trainer.callbacks says (the run record the report "
                      "reads, the parameter table, throughput, predict's writer, fit's summary)")  # fmt: skip


class FinscaleCLI(CompatCLI):
    """LightningCLI with configs/base.yaml under every config, the run callbacks, data→model links, the memory
    pre-flight, run naming and one-line config errors.

    A run refused after its folder was created (Lightning rejects a setting late) leaves no folder behind."""

    run_dir: Path | None = None  # where this run writes (known once the config is parsed)

    def __init__(self, *args, record: Callback | None = None, **kwargs) -> None:
        """record: a RunRecordCallback that replaces run_callbacks' own (an hpo trial's, which knows its study)."""
        argv = kwargs.get("args") or []
        self._only = argv[0] if argv and argv[0] in LightningCLI.subcommands() else None
        self.record = record
        self.created: list[Path] = []  # the run folder this run claimed and the parents it made, deepest first
        parser_kwargs = {"parser_mode": "omegaconf", "exit_on_error": False}
        base = {"default_config_files": [str(base_config())] if reads_base(argv) else []}
        parser_kwargs |= {self._only: base} if self._only else base  # the subcommand's parser, or the only one
        super().__init__(*args, parser_kwargs=parser_kwargs, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        """The parser of the subcommand being run only: building all four costs ~1 s at every start (and trial)."""
        every = LightningCLI.subcommands()
        return {self._only: every[self._only]} if self._only else every

    def add_arguments_to_parser(self, parser) -> None:
        limit_help = "memory the pre-flight may plan for (e.g. 16GB); default: what the device has free"
        parser.add_argument("--memory_limit", type=str | None, default=None, help=limit_help)
        parser.add_argument("--run_callbacks", type=list[Callback], default=RUN_CALLBACKS, help=RUN_CALLBACKS_HELP)
        parser.link_arguments("data.context_length", "model.context_length")
        channels = lambda dm: dm.n_channels  # noqa: E731 - known from the tier, before any data is read
        parser.link_arguments("data", "model.n_channels", compute_fn=channels, apply_on="instantiate")

    def adjust_parser(self, parser, subcommand: str) -> None:
        for action in parser._actions:
            if "--ckpt_path" in action.option_strings:
                action.help = CKPT_HELP

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except (argparse.ArgumentError, OmegaConfBaseException) as err:
            raise ConfigError(_one_line(err)) from None

    def load_ckpt_hparams(self, load) -> None:
        """Resolve `--ckpt_path last` and check the checkpoint before Lightning reads its hyperparameters."""
        config = self.config.get(self.config.get("subcommand") or "", None)
        if config is None or not config.get("ckpt_path"):
            return
        config.ckpt_path = str(resolve_last(config))
        check_checkpoint(Path(config.ckpt_path), config, self.config.get("subcommand"))
        try:
            load()
        except (SystemExit, Exception) as err:  # hyperparameters that no longer parse
            raise ConfigError(f"{config.ckpt_path}: its model settings do not parse ({_one_line(err)})") from None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        check_trainer(config, self.subcommand)
        if self.subcommand == "fit":
            size, available, where = size_from_config(config)
            preflight(size, available, where)  # before the model is allocated
        self.created = name_run(self.subcommand, config)  # the last step: it claims the run folder
        self.run_dir = run_folder(config)

    def run_subcommand(self, subcommand: str, run) -> None:
        if subcommand == "fit" and self.run_dir is not None:  # a resumed run: what a killed save left is stale
            remove_temporaries(self.run_dir / "checkpoints")
        try:
            run()
        except (*USER_ERRORS, ValueError, OSError) as err:
            trained = self.trainer.fit_loop.epoch_loop.batch_progress.total.completed > 0
            refused = disk_error(err) if subcommand == "fit" and trained else None
            if refused is not None and refused.filename is not None:  # a full disk: one line, and what was kept
                raise OSError(refused.errno, f"{refused.strerror}; {self._kept()}", refused.filename) from None
            if subcommand == "fit" and trained or isinstance(err, OSError) and err.filename is None:
                raise  # a failure during training is not a refused setting: keep the run and the traceback
            _remove_created(self.created)  # refused before the first step (Lightning checks some settings late)
            if isinstance(err, ConfigError | DataError | OSError):  # an OSError stays one: a full disk, not a setting
                raise
            raise ConfigError(_one_line(err)) from None

    def _kept(self) -> str:
        """What a fit that failed to write keeps (its checkpoints are written whole or not at all)."""
        from callbacks.last_checkpoint import LAST, checkpoint_dir

        last = checkpoint_dir(self.trainer) / LAST
        if not last.is_file():
            return "the run folder holds no checkpoint to resume"
        return f"the run is kept: once there is room, resume it with --ckpt_path {last}"

    def instantiate_trainer(self, **kwargs):
        """The trainer with trainer.callbacks, then run_callbacks (the hpo trial's record in place of the own)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        listed = config["trainer"].get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        always = list(config.get("run_callbacks") or [])
        if self.record is not None:  # an hpo trial's record, which knows its study
            mine = [i for i, c in enumerate(always) if type(c) is type(self.record)]
            if not mine:
                raise ConfigError(f"run_callbacks lists no {type(self.record).__name__}: an hpo trial records its "
                                  "run through it")  # fmt: skip
            always[mine[0]] = self.record
        return super().instantiate_trainer(**kwargs, callbacks=[*listed, *always])

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
            if self.subcommand in ("fit", "validate", "test", "predict"):
                self.datamodule.setup(self.subcommand)  # data errors now, before anything is written
        except (ValueError, TypeError, MisconfigurationException) as err:
            _remove_created(self.created)
            raise _root_data_error(err) or ConfigError(_one_line(err)) from None
        except BaseException:
            _remove_created(self.created)
            raise
        atomic_checkpoints(self.trainer)


def reads_base(argv: list[str]) -> bool:
    """configs/base.yaml goes under the configs, unless the first `--config` is a run's saved config.yaml: that one is
    complete as it was run, and a key it lacks (added since) takes the code's default, never base.yaml's."""
    files = config_files(argv)
    return not files or not is_saved_run(Path(files[0]))


def _remove_created(folders: list[Path]) -> None:
    """Remove a refused run's folder and the parents this run created (deepest first), nothing else."""
    import shutil

    for folder in folders:
        if folder == folders[0]:
            shutil.rmtree(folder, ignore_errors=True)
        elif folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def snake_options(argv: list[str]) -> list[str]:
    """`--trainer.max-epochs 5` → `--trainer.max_epochs 5`: LightningCLI spells options with underscores; the
    kebab-case spelling of the other subcommands is accepted too (option names only, never values)."""
    return [a.split("=", 1)[0].replace("-", "_").replace("__", "--", 1) + a[len(a.split("=", 1)[0]):]
            if a.startswith("--") else a for a in argv]  # fmt: skip


def run_lightning(argv: list[str], extra_callbacks: list | None = None, record=None) -> FinscaleCLI:
    """One LightningCLI run (`fit`, `validate`, `test`, `predict` + config arguments), in this process.

    The one fit path: `cli.py fit` and every `hpo` trial come through here; a trial adds its pruning
    callback (`extra_callbacks`) and a run record that knows the trial."""
    from datamodules.market_datamodule import MarketDataModule
    from lightning_modules.forecaster import Forecaster

    argv = check_config_files(snake_options(argv))
    quiet_lightning()
    return FinscaleCLI(
        Forecaster,
        MarketDataModule,
        args=argv,
        record=record,
        trainer_defaults={"callbacks": list(extra_callbacks or [])},
        save_config_kwargs={"overwrite": True},  # a resumed run records the command that resumed it
        auto_configure_optimizers=False,
    )


def seed_list(argv: list[str]) -> tuple[list[str], list[int | None]]:
    """`fit … --seeds 0,1,2`: the arguments without it, and the seeds to run (one run each; [None]: as configured)."""
    at = next((i for i, a in enumerate(argv) if a == "--seeds" or a.startswith("--seeds=")), None)
    if at is None:
        return argv, [None]
    inline = argv[at].startswith("--seeds=")
    value = argv[at].split("=", 1)[1] if inline else (argv[at + 1] if at + 1 < len(argv) else "")
    rest = argv[:at] + argv[at + (1 if inline else 2) :]
    try:
        seeds = [int(s) for s in value.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds takes a comma-separated list of integers (e.g. 0,1,2), got {value!r}") from None
    fixed = any(a.split("=", 1)[0] in ("--seed_everything", "--ckpt_path", "--trainer.logger.init_args.version")
                for a in rest)  # fmt: skip
    if rest[0] != "fit" or fixed or len(set(seeds)) != len(seeds):
        raise ConfigError("--seeds goes with `fit`, without --seed_everything, --ckpt_path or a run version (each "
                          "seed is its own run), and names each seed once")  # fmt: skip
    return rest, seeds


def run_trainer(argv: list[str]) -> int:
    """`fit`, `validate`, `test`, `predict`: exit code 1 when training diverged. `fit --seeds 0,1,2` runs the
    configuration once per seed (each its own run; the report scores them as seeds of one configuration)."""
    from common.errors import TrainingDiverged

    argv, seeds = seed_list(snake_options(argv))
    for seed in seeds:
        try:
            run_lightning(argv if seed is None else [*argv, "--seed_everything", str(seed)])
        except TrainingDiverged as err:
            print(f"error: training diverged{'' if seed is None else f' (seed {seed})'}: {err}", file=sys.stderr)
            return 1
    return 0


def parse_fit_config(argv: list[str]):
    """The fit config of `--config FILE [overrides]`, parsed and checked like `cli.py fit` would; builds nothing."""
    from datamodules.market_datamodule import MarketDataModule
    from lightning_modules.forecaster import Forecaster

    argv = check_config_files(snake_options(argv))
    quiet_lightning()

    class ParseOnly(FinscaleCLI):
        def before_instantiate_classes(self) -> None:  # no pre-flight, no run directory
            pass

        def instantiate_classes(self) -> None:
            pass

    cli = ParseOnly(Forecaster, MarketDataModule, args=argv, run=False, auto_configure_optimizers=False,
                    seed_everything_default=False)  # fmt: skip
    return cli.config


def run_summary(argv: list[str]) -> int:
    """`cli.py summary --config …`: parse the fit config (overrides included), size it, allocate nothing."""
    from rich.console import Console

    from datamodules.assets import tickers_of
    from datamodules.features import TIERS
    from datamodules.market_datamodule import MarketDataModule
    from lightning_modules.forecaster import Forecaster
    from sizing.run_size import summary_table

    argv = check_config_files(snake_options(argv))
    quiet_lightning()

    class SummaryCLI(FinscaleCLI):
        def before_instantiate_classes(self) -> None:
            size, available, where = size_from_config(self.config)
            title = f"{(config_files(argv) or ['config'])[0]}: {size.budget} budget"
            extra = len(tickers_of(self.config.data.tickers)) if self.config.data.asset_channels else 0
            by_tier = {tier: len(columns) + extra for tier, columns in TIERS.items()}
            table = summary_table(size, available, where, title, by_tier, float(self.config.model.optim.lr))
            Console(width=None if sys.stdout.isatty() else 150).print(table)

        def instantiate_classes(self) -> None:  # nothing is built
            pass

    seed = logging.getLogger("lightning.fabric.utilities.seed")  # the config's seed: nothing is drawn here
    seed.disabled = True
    try:
        SummaryCLI(Forecaster, MarketDataModule, args=argv, run=False, auto_configure_optimizers=False,
                   seed_everything_default=False)  # fmt: skip
    finally:
        seed.disabled = False
    return 0
