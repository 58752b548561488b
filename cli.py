"""finscale command line: argument parsing and dispatch only.

python cli.py fit      --config configs/2M.yaml [--data.horizon 3] [--trainer.max_epochs 5]
python cli.py validate --config configs/2M.yaml --ckpt_path logs/2M/<run>/checkpoints/best-….ckpt
python cli.py test     --config configs/2M.yaml --ckpt_path …      (the only way to test metrics)
python cli.py predict  --config configs/2M.yaml --ckpt_path …      (predictions.csv)
python cli.py summary  --config configs/2B.yaml                     (size, FLOPs, memory; no allocation)
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
from lightning_modules.sizing import MemoryPreflightError, preflight


class ConfigError(ValueError):
    """An impossible or unknown configuration value."""


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


def _cli_class():
    """FinscaleCLI: LightningCLI with data→model links, the memory pre-flight and run naming."""
    from lightning.pytorch.cli import LightningCLI

    class FinscaleCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            limit_help = "memory the pre-flight may plan for (e.g. 16GB); default: what the device has free"
            parser.add_argument("--memory_limit", type=str | None, default=None, help=limit_help)
            parser.link_arguments("data.context_length", "model.context_length")
            channels = lambda dm: dm.n_channels  # noqa: E731 - known from the manifest, before any data is read
            parser.link_arguments("data", "model.n_channels", compute_fn=channels, apply_on="instantiate")

        def parse_arguments(self, parser, args) -> None:
            try:
                super().parse_arguments(parser, args)
            except argparse.ArgumentError as err:
                raise ConfigError(_one_line(err)) from None

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand]
            if self.subcommand == "fit":
                size, available, where = size_from_config(config)
                preflight(size, available, where)  # before the model is allocated
            name_run(self.subcommand, config)

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except (ValueError, TypeError) as err:
                raise _root_data_error(err) or ConfigError(_one_line(err)) from None

    return FinscaleCLI


def _trainer_defaults() -> dict:
    from callbacks.prediction_writer import PredictionWriter
    from callbacks.run_record import RunRecordCallback
    from callbacks.throughput import ThroughputCallback

    return {"callbacks": [RunRecordCallback(), ThroughputCallback(), PredictionWriter()]}


def _quiet_lightning() -> None:
    logging.getLogger("lightning").handlers.clear()  # its stderr handler would double every line; root prints
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation noise
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # we pass argv on purpose


PARSER_KWARGS = {"parser_mode": "omegaconf", "exit_on_error": False}


def trainer_main(argv: list[str]) -> int:
    from datamodules.market_datamodule import MarketDataModule
    from lightning_modules.forecaster import Forecaster, TrainingDiverged

    _quiet_lightning()
    try:
        _cli_class()(
            Forecaster,
            MarketDataModule,
            args=argv,
            parser_kwargs=PARSER_KWARGS,
            trainer_defaults=_trainer_defaults(),
            save_config_kwargs={"overwrite": True},  # a resumed run records the command that resumed it
            auto_configure_optimizers=False,
        )
    except TrainingDiverged as err:
        print(f"error: training diverged: {err}", file=sys.stderr)
        return 1
    return 0


def summary_main(argv: list[str]) -> int:
    """`cli.py summary --config …`: parse the fit config (overrides included), size it, allocate nothing."""
    from rich.console import Console

    from datamodules.market_datamodule import MarketDataModule
    from lightning_modules.forecaster import Forecaster
    from lightning_modules.sizing import summary_table

    _quiet_lightning()

    class SummaryCLI(_cli_class()):
        def before_instantiate_classes(self) -> None:
            size, available, where = size_from_config(self.config)
            title = f"{argv[argv.index('--config') + 1] if '--config' in argv else 'config'}: {size.budget} budget"
            Console(width=None if sys.stdout.isatty() else 150).print(summary_table(size, available, where, title))

        def instantiate_classes(self) -> None:  # nothing is built
            pass

    SummaryCLI(Forecaster, MarketDataModule, args=argv, run=False, auto_configure_optimizers=False,
               parser_kwargs=PARSER_KWARGS, seed_everything_default=False)  # fmt: skip
    return 0


def size_from_config(config):
    """RunSize, available bytes and device name for a parsed fit config, without building anything."""
    import torch

    from datamodules.market_datamodule import input_columns
    from lightning_modules.memory import available_memory, parse_bytes
    from lightning_modules.patchtst import PatchTSTConfig
    from lightning_modules.sizing import size_run

    data, trainer = config.data, config.trainer
    n_channels = len(input_columns(data.dataset, data.version, data.features, data.data_dir))
    gpu = str(trainer.accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    devices = trainer.devices
    count = (torch.cuda.device_count() if gpu else 1) if devices in ("auto", -1, "-1") else devices
    count = len(count) if isinstance(count, list) else int(count)
    shards = count if "fsdp" in str(trainer.strategy).lower() else 1
    precision = str(trainer.precision or "32-true")
    try:
        cfg = PatchTSTConfig(**dict(vars(config.model.net)))
        memory_limit = parse_bytes(config.memory_limit) if config.get("memory_limit") else None
        size = size_run(
            n_channels, data.context_length, cfg, precision, data.batch_size, shards, "cuda" if gpu else "cpu"
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(_one_line(err)) from None
    available, where = available_memory("auto" if gpu else "cpu")
    if memory_limit is not None:
        available, where = memory_limit, f"{where} (--memory_limit)"
    return size, available, where


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
    """Place the run before anything is created. fit → logs/<experiment>/<time>-h<h>-s<seed>; fit resuming a
    checkpoint of a run → that run; validate/test/predict of a run's checkpoint → a sub-folder of that run.
    `--ckpt_path last` means the newest last.ckpt of the experiment."""
    if subcommand != "fit" and not config.get("ckpt_path"):
        raise ConfigError(f"{subcommand} needs --ckpt_path (a checkpoint written by fit)")
    logger = config.trainer.get("logger")
    if not hasattr(logger, "init_args") or not str(logger.class_path).endswith("TensorBoardLogger"):
        return
    args = logger.init_args
    experiment = Path(args.save_dir or "logs") / (args.name or "")
    if config.get("ckpt_path") == "last":
        config.ckpt_path = str(
            _newest_last_checkpoint(experiment, f"-h{config.data.horizon}-s{config.seed_everything}")
        )
    if config.get("ckpt_path"):
        check_checkpoint(Path(config.ckpt_path), config.data)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    checkpoint = Path(config.get("ckpt_path") or "")
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    if run_dir is not None:
        args.save_dir, args.name, args.version = str(run_dir.parent.parent), run_dir.parent.name, run_dir.name
        if subcommand != "fit":
            args.sub_dir = f"{subcommand}-{stamp}"
    elif subcommand == "fit" and not args.version:
        base = f"{stamp}-h{config.data.horizon}-s{config.seed_everything}"
        args.version = next(
            v for v in (base, *(f"{base}-{i}" for i in range(2, 1000))) if not (experiment / v).exists()
        )
    elif not args.version:
        args.version = f"{subcommand}-{stamp}"


def _newest_last_checkpoint(experiment: Path, run_suffix: str) -> Path:
    """The newest last.ckpt among the experiment's runs with this horizon and seed (`…-h1-s0`, `…-h1-s0-2`)."""
    candidates = [p for p in experiment.glob("*/checkpoints/last.ckpt")
                  if p.parent.parent.name.endswith(run_suffix) or f"{run_suffix}-" in p.parent.parent.name]  # fmt: skip
    if not candidates:
        raise ConfigError(f"--ckpt_path last: no {experiment}/<run>{run_suffix}/checkpoints/last.ckpt to resume")
    return max(candidates, key=lambda p: p.stat().st_mtime)


DATA_KEYS = ("dataset", "version", "horizon", "threshold", "label_price", "context_length", "features", "splits")


def check_checkpoint(path: Path, data) -> None:
    """The checkpoint exists and was trained on the data this config describes (labels, splits, channels)."""
    import torch

    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(
            "datamodule_hyper_parameters", {}
        )
    except Exception as err:  # torch raises several types for damaged files
        raise ConfigError(f"{path}: unreadable checkpoint ({type(err).__name__})") from None
    current = {key: _plain(data.get(key)) for key in DATA_KEYS}
    differ = [f"data.{k}: checkpoint {_plain(saved[k])!r}, config {current[k]!r}" for k in DATA_KEYS
              if k in saved and _plain(saved[k]) != current[k]]  # fmt: skip
    if differ:
        raise ConfigError(f"{path} was trained on other data settings ({'; '.join(differ)}); use that run's "
                          "config.yaml or matching overrides")  # fmt: skip


def _plain(value):
    """Namespaces, dataclass dicts and lists as plain comparable values."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    return list(value) if isinstance(value, tuple | list) else value


COMMANDS = {"data": data_main, "summary": None, **dict.fromkeys(TRAINER_COMMANDS, None)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(
            f"error: usage: python cli.py {{{','.join(COMMANDS)}}} ... (got {argv[:1] or 'nothing'})", file=sys.stderr
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # stderr: errors only
    try:
        if argv[0] == "data":
            return data_main(argv[1:])
        return summary_main(argv[1:]) if argv[0] == "summary" else trainer_main(argv)
    except (DataError, ConfigError, MemoryPreflightError) as err:  # user errors: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
