"""finscale command line: argument parsing and dispatch only.

python cli.py fit      --config configs/2M.yaml [--data.horizon 3] [--trainer.max_epochs 5]
python cli.py validate --config configs/2M.yaml --ckpt_path logs/2M/<run>/checkpoints/best-….ckpt
python cli.py test     --config configs/2M.yaml --ckpt_path …      (the only way to test metrics)
python cli.py predict  --config configs/2M.yaml --ckpt_path …      (predictions.csv)
python cli.py data     build | verify | list | import | download
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from datetime import datetime
from pathlib import Path

from datamodules.errors import DataError
from datamodules.features import TIERS
from datamodules.sources import DATA_DIR


class ConfigError(ValueError):
    """An impossible or unknown configuration value."""


USER_ERRORS = (DataError, ConfigError)  # one line on stderr, exit code 2, no traceback
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: one line, exit 2
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def _data_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cli.py data", description="Raw sources and versioned processed datasets.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    build = commands.add_parser("build", help="compute features and register a processed version")
    build.add_argument("--ticker", default="GSPC")
    build.add_argument("--tier", default="a25", choices=sorted(TIERS))
    build.add_argument("--version", type=int, default=None, help="default: latest if identical, else the next")
    commands.add_parser("verify", help="check every manifest entry against its file")
    commands.add_parser("list", help="show registered datasets")
    imp = commands.add_parser("import", help="validate and register an OHLCV CSV")
    imp.add_argument("--csv", type=Path, required=True)
    imp.add_argument("--ticker", required=True)
    imp.add_argument("--no-volume", action="store_true", help="the series has no Volume column (e.g. VIX)")
    down = commands.add_parser("download", help="fetch daily OHLCV through yfinance, then import it")
    down.add_argument("--ticker", required=True)
    down.add_argument("--symbol", default=None, help="yfinance symbol if it differs (e.g. ^GSPC)")
    for sub in commands.choices.values():
        sub.add_argument("--data-dir", type=Path, default=DATA_DIR)
    return parser


def data_main(argv: list[str]) -> int:
    from datamodules import commands

    args = _data_parser().parse_args(argv)
    if args.command == "build":
        return commands.build(args.ticker, args.tier, args.version, args.data_dir)
    if args.command == "verify":
        return commands.verify(args.data_dir)
    if args.command == "list":
        return commands.list_datasets(args.data_dir)
    if args.command == "import":
        return commands.import_file(args.csv, args.ticker, args.data_dir, args.no_volume)
    return commands.download_ticker(args.ticker, args.symbol, args.data_dir)


def trainer_main(argv: list[str]) -> int:
    from lightning.pytorch.cli import LightningCLI

    from callbacks.prediction_writer import PredictionWriter
    from callbacks.run_record import RunRecordCallback
    from callbacks.throughput import ThroughputCallback
    from datamodules.market_datamodule import MarketDataModule
    from lightning_modules.forecaster import Forecaster

    logging.getLogger("lightning").handlers.clear()  # its stderr handler would double every line; root prints
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation noise

    class FinscaleCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments("data.context_length", "model.context_length")
            parser.link_arguments(
                "data", "model.n_channels", compute_fn=lambda dm: dm.n_channels, apply_on="instantiate"
            )

        def parse_arguments(self, parser, args) -> None:
            try:
                super().parse_arguments(parser, args)
            except argparse.ArgumentError as err:
                raise ConfigError(_one_line(err)) from None

        def before_instantiate_classes(self) -> None:
            name_run(self.subcommand, self.config[self.subcommand])

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except (ValueError, TypeError) as err:
                raise _root_data_error(err) or ConfigError(_one_line(err)) from None

    FinscaleCLI(
        Forecaster,
        MarketDataModule,
        args=None if argv == sys.argv[1:] else argv,  # LightningCLI warns when both are given
        parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
        trainer_defaults={"callbacks": [RunRecordCallback(), ThroughputCallback(), PredictionWriter()]},
        auto_configure_optimizers=False,
    )
    return 0


def _root_data_error(err: BaseException | None) -> DataError | None:
    """The DataError behind an error that jsonargparse wrapped (e.g. in a link's compute_fn), if any."""
    while err is not None:
        if isinstance(err, DataError):
            return err
        err = err.__cause__ or err.__context__
    return None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) < 400 else text[:400] + " …"


def name_run(subcommand: str, config) -> None:
    """Give the TensorBoard run a name before anything is created: fit → logs/<experiment>/<timestamp>;
    validate/test/predict of a checkpoint inside logs/<experiment>/<run>/checkpoints/ → a sub-folder of that run."""
    if subcommand != "fit" and not config.get("ckpt_path"):
        raise ConfigError(f"{subcommand} needs --ckpt_path (a checkpoint written by fit)")
    logger = config.trainer.get("logger")
    if not hasattr(logger, "init_args") or not str(logger.class_path).endswith("TensorBoardLogger"):
        return
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    args = logger.init_args
    checkpoint = Path(config.get("ckpt_path") or "")
    if subcommand == "fit":
        args.version = args.version or f"{stamp}-h{config.data.horizon}-s{config.seed_everything}"
    elif checkpoint.parent.name == "checkpoints":
        run_dir = checkpoint.parent.parent
        args.save_dir, args.name, args.version = str(run_dir.parent.parent), run_dir.parent.name, run_dir.name
        args.sub_dir = f"{subcommand}-{stamp}"
    else:
        args.version = args.version or f"{subcommand}-{stamp}"


COMMANDS = {"data": data_main, **dict.fromkeys(TRAINER_COMMANDS, None)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(
            f"error: usage: python cli.py {{{','.join(COMMANDS)}}} ... (got {argv[:1] or 'nothing'})", file=sys.stderr
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # stderr: errors only
    try:
        return data_main(argv[1:]) if argv[0] == "data" else trainer_main(argv)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
