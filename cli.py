"""finscale command line: argument parsing and dispatch only.

python cli.py fit      --config configs/2M.yaml [--data.horizon 3] [--trainer.max_epochs 5]
python cli.py validate --config configs/2M.yaml --ckpt_path logs/2M/<run>/checkpoints/best-….ckpt
python cli.py test     --config configs/2M.yaml --ckpt_path …      (the only way to test metrics)
python cli.py predict  --config configs/2M.yaml --ckpt_path …      (predictions.csv)
python cli.py summary  --config configs/2B.yaml                     (size, FLOPs, memory; no allocation)
python cli.py hpo      --config configs/2M.yaml --trials 50 [--search-space …] [--storage URL] [--study-name …]
                        [--export-best FILE] [fit overrides such as --trainer.max_epochs 30]
python cli.py campaign --config configs/campaign/scaling.yaml [--trials N] [--cells 2M:1,20M:3] [--status]
python cli.py study    --config configs/study/answer.yaml [--status] [--results results/answer]
python cli.py report   [--logdir logs] [--out DIR] [--bootstrap 1000] [--block 20] [--no-baselines]
python cli.py data     build | verify | list | import | download
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from common.errors import ConfigError, DataError, MemoryPreflightError
from datamodules.features import TIERS
from datamodules.sources import DATA_DIR

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
USER_ERRORS = (DataError, ConfigError, MemoryPreflightError)  # bad input or an impossible request: one line, exit 2


class _Parser(ArgumentParser):
    """LightningCLI's parser (jsonargparse) for every command: one flag style (`--search_space`, like `--ckpt_path`;
    the kebab-case spelling is accepted too), help with each option's type and default, and usage errors as one
    line (exit 2) in argparse's words."""

    def __init__(self, **kwargs) -> None:
        self.known: set[str] = set()  # option strings, for telling fit overrides apart
        self.spelled: dict[str, str] = {}  # dest → its options as argparse names them: --ticker/--tickers
        self.commands: dict[str, _Parser] = {}  # subcommand → its parser
        super().__init__(exit_on_error=False, **kwargs)

    def add_argument(self, *names, **kwargs):
        aliases = [name.replace("_", "-") for name in names if name.startswith("--") and "_" in name]
        self.known.update(names, aliases)
        if names and names[0].startswith("--"):
            self.spelled[kwargs.get("dest") or names[0][2:]] = "/".join(names)
        return super().add_argument(*names, *aliases, **kwargs)

    def add_command(self, commands, name: str, parser: _Parser, about: str) -> None:
        self.commands[name] = parser
        commands.add_subcommand(name, parser, help=about)

    def parse(self, argv: list[str]):
        try:
            return self.parse_args(argv)
        except argparse.ArgumentError as err:
            command = argv[0] if argv and argv[0] in self.commands else None  # named as argparse names it
            where, prog = (self.commands[command], f"{self.prog} {command}") if command else (self, self.prog)
            raise ConfigError(f"{prog}: {argparse_words(str(err), where.spelled)}") from None

    def split(self, argv: list[str]) -> tuple[list[str], list[str]]:
        """(this command's arguments, the rest): options it does not know are fit overrides, with their values."""
        mine, overrides, i = [], [], 0
        while i < len(argv):
            arg = argv[i]
            name = arg.split("=", 1)[0]
            # its own: a value, one of its options, or an abbreviation of exactly one (argparse reads those too)
            ours = not arg.startswith("--") or name in self.known or sum(o.startswith(name) for o in self.known) == 1
            take = 1 if "=" in arg or i + 1 == len(argv) or argv[i + 1].startswith("--") else 2
            (mine if ours else overrides).extend(argv[i : i + (1 if ours else take)])
            i += 1 if ours else take
        return mine, overrides


class Kind:
    """An option's type: a conversion of its text, named in the help (`type: path`) and in argparse's errors
    (`invalid float value: 'wide'`). jsonargparse's own float refuses nan and inf before the command's range check
    can say what is allowed, and it names pathlib.Path `<class 'Path'>`."""

    def __init__(self, name: str, convert) -> None:
        self.__name__, self.convert = name, convert

    def __call__(self, text: str):
        return self.convert(text)

    def __str__(self) -> str:
        return self.__name__


INT, REAL, PATH = Kind("int", int), Kind("float", float), Kind("path", Path)
TEXT = str | None  # an optional text: `null` (as the help shows the default) is None


def argparse_words(message: str, spelled: dict[str, str]) -> str:
    """jsonargparse's usage errors as argparse says them, on one line (`required: --ticker/--tickers`, not
    `import.tickers`; a missing subcommand is a required `command`)."""
    required = re.match(r"the following arguments are required: (.*)", message)
    if required:
        dests = [name.strip().rsplit(".", 1)[-1] for name in required.group(1).split(",")]
        return f"the following arguments are required: {', '.join(spelled.get(d, f'--{d}') for d in dests)}"
    missing = re.match(r'expected "(\w+)" to be one of .*, but it was not provided', message)
    if missing:
        return f"the following arguments are required: {missing.group(1)}"
    return " ".join(message.split())


def _data_parser() -> _Parser:
    parser = _Parser(prog="cli.py data", description="Raw sources and versioned processed datasets.")
    commands = parser.add_subcommands(dest="command", required=True)
    subs = {name: _Parser(prog=f"cli.py data {name}", description=about) for name, about in DATA_COMMANDS.items()}
    build = subs["build"]
    build.add_argument("--ticker", default="GSPC", help="the asset, as registered by `data import`")
    build.add_argument("--tier", default="a25", choices=sorted(TIERS), help="the feature tier")
    build.add_argument("--version", type=INT, default=None, help="null: the latest if identical, else the next")
    imp = subs["import"]
    imp.add_argument("--csv", type=PATH, nargs="+", required=True, help="one file per ticker")
    imp.add_argument("--ticker", "--tickers", dest="tickers", required=True, help="e.g. SPY, or SPY,DIA for two files")
    imp.add_argument("--no_volume", action="store_true", help="the series has no Volume column (e.g. VIX)")
    imp.add_argument("--allow_implausible", action="store_true", help="the series is real though it breaks a "
                     "plausibility rule (long gap, ×4 day, …); the manifest records which")  # fmt: skip
    down = subs["download"]
    down.add_argument("--ticker", "--tickers", dest="tickers", required=True, help="e.g. SPY,DIA,QQQ,^DJI,^IXIC")
    down.add_argument(
        "--symbol", type=TEXT, default=None, help="yfinance symbol if it differs (e.g. ^GSPC; one ticker only)"
    )
    down.add_argument("--no_volume", action="store_true", help="the series has no volume (e.g. ^VIX)")
    down.add_argument("--allow_implausible", action="store_true", help="as for import")
    for name, sub in subs.items():
        sub.add_argument("--data_dir", type=PATH, default=DATA_DIR, help="raw/ and processed/ with their manifests")
        parser.add_command(commands, name, sub, DATA_COMMANDS[name])
    return parser


DATA_COMMANDS = {
    "build": "compute features and register a processed version",
    "verify": "check every manifest entry against its file",
    "list": "show registered datasets, the tiers and each budget's size on them",
    "import": "validate and register OHLCV CSVs (all validated before any is copied)",
    "download": "fetch daily OHLCV through yfinance, then import it",
}


def data_main(argv: list[str]) -> int:
    from datamodules import commands
    from datamodules.sources import split_tickers

    parsed = _data_parser().parse(argv)
    args = parsed[parsed.command]
    args.command = parsed.command
    with commands.user_errors(args.data_dir):  # OSError and a --data_dir that is a file: one line, exit 2
        if args.command == "build":
            return commands.build(args.ticker, args.tier, args.version, args.data_dir)
        if args.command == "verify":
            return commands.verify(args.data_dir)
        if args.command == "list":
            return commands.list_datasets(args.data_dir, _budget_counters())
        tickers = split_tickers(args.tickers)
        if args.command == "import":
            if len(tickers) != len(args.csv):
                raise DataError(f"data import: {len(args.csv)} file(s) but {len(tickers)} ticker(s); give one per file")
            files = list(zip(args.csv, tickers, strict=True))
            return commands.import_files(files, args.data_dir, args.no_volume, args.allow_implausible)
        if args.symbol is not None and len(tickers) != 1:
            raise DataError("data download: --symbol goes with one --ticker")
        symbols = None if args.symbol is None else [args.symbol]
        return commands.download_tickers(tickers, symbols, args.data_dir, args.no_volume, args.allow_implausible)


def _budget_counters() -> dict:
    """Budget → parameter count of its shipped config's shape on C input channels (for `data list`)."""
    from common.config_files import fit_config
    from lightning_modules.patchtst_config import PatchTSTConfig
    from sizing.accounting import parameter_count
    from sizing.budget import BUDGETS

    counters = {}
    for name in BUDGETS:
        config = fit_config(Path(__file__).parent / "configs" / f"{name}.yaml")
        net, context = PatchTSTConfig(**config["model"]["net"]), int(config["data"]["context_length"])
        counters[name] = lambda channels, net=net, context=context: parameter_count(channels, context, net)
    return counters


HEARTBEAT_HELP = ("seconds between a running trial's heartbeats; a trial silent for 5 of them (a "
                  "dead or hung worker on any machine) is failed and queued again")  # fmt: skip
KEEP_HELP = ("the best k complete trials of a study keep their checkpoints; the others' are deleted "
             "after each trial (their records, predictions and TensorBoard files stay)")  # fmt: skip


def _add_worker_options(parser: _Parser) -> None:
    from hpo.retention import KEEP_CHECKPOINTS
    from hpo.storage import HEARTBEAT_S

    parser.add_argument("--heartbeat", type=REAL, default=HEARTBEAT_S, help=HEARTBEAT_HELP)
    parser.add_argument("--keep_checkpoints", type=INT, default=KEEP_CHECKPOINTS, help=KEEP_HELP)


def _hpo_parser() -> _Parser:
    from hpo.study import DEFAULT_SPACE

    parser = _Parser(prog="cli.py hpo", description="Optuna search; every trial is one `fit` with overrides. "
                     "Other --key value arguments are fit overrides given to every trial.")  # fmt: skip
    parser.add_argument("--config", type=PATH, default=Path(__file__).resolve().parent / "configs" / "2M.yaml",
                        help="the fit config of every trial (configs/2M.yaml of this repository)")  # fmt: skip
    parser.add_argument("--trials", type=INT, required=True, help="finished (complete + pruned) trials wanted")
    parser.add_argument("--search_space", type=PATH, default=DEFAULT_SPACE, help="the search space YAML (configs/hpo/)")
    parser.add_argument("--storage", type=TEXT, default=None, help="Optuna RDB URL; null: sqlite under "
                        "<logs>/hpo/<study>/; postgresql://user@host/db for workers on several machines")  # fmt: skip
    _add_worker_options(parser)
    parser.add_argument(
        "--study_name", type=TEXT, default=None, help="null: <config>-h<h>-<tickers>.dataset.<tier>-v<version>"
    )
    parser.add_argument("--export_best", type=PATH, default=None, help="write the best trial as a fit config")
    return parser


def hpo_main(argv: list[str]) -> int:
    from hpo.study import HpoRequest, StudyRunner

    parser = _hpo_parser()
    argv, overrides = parser.split(argv)
    args = parser.parse(argv)
    if not args.config.is_file():
        raise ConfigError(f"config not found: {args.config}")
    request = HpoRequest(args.config, args.trials, args.search_space, args.storage, args.study_name,
                         args.export_best, overrides, args.heartbeat, args.keep_checkpoints)  # fmt: skip
    return StudyRunner(request).run()


def _campaign_parser() -> _Parser:
    about = ("The HPO study of every cell of a budgets × horizons matrix, smallest first; rerun to resume. "
             "Other --key value arguments are fit overrides.")  # fmt: skip
    parser = _Parser(prog="cli.py campaign", description=about)
    parser.add_argument("--config", type=PATH, required=True, help="a campaign YAML (configs/campaign/)")
    parser.add_argument("--trials", type=INT, default=None, help="finished trials per cell (null: the config's)")
    parser.add_argument("--cells", type=TEXT, default=None, help="a subset, e.g. 2M:1,20M:3 (budget:horizon)")
    parser.add_argument("--status", action="store_true", help="print where the campaign stands; run nothing")
    parser.add_argument("--storage", type=TEXT, default=None, help="one Optuna RDB URL for every cell's study (e.g. "
                        "postgresql://user@host/db); default: each study's sqlite in <logs>/hpo/<study>/")  # fmt: skip
    _add_worker_options(parser)
    return parser


def campaign_main(argv: list[str]) -> int:
    from campaign.plan import load_plan
    from campaign.runner import run_campaign

    parser = _campaign_parser()
    argv, overrides = parser.split(argv)
    args = parser.parse(argv)
    plan = load_plan(args.config, args.trials, args.cells, overrides, args.storage, args.heartbeat,
                     args.keep_checkpoints)  # fmt: skip
    return run_campaign(plan, args.status)


def _study_parser() -> _Parser:
    about = ("Every fit of a study (arms × budgets × data × horizons × seeds), then `test` of each run once all are "
             "final, then the shipped copy and its report; rerun to resume. Other --key value arguments are fit "
             "overrides.")  # fmt: skip
    parser = _Parser(prog="cli.py study", description=about)
    parser.add_argument("--config", type=PATH, required=True, help="a study YAML (configs/study/)")
    parser.add_argument("--logdir", type=PATH, default=Path("logs"), help="runs go to <logdir>/study/<name>/runs/")
    parser.add_argument(
        "--results",
        type=PATH,
        default=None,
        help="where the finished study ships (null: results/<name>): runs' configs, records and predictions, "
        "report.md, report.csv, plots/",
    )
    parser.add_argument("--status", action="store_true", help="print where the study stands; run nothing")
    return parser


def study_main(argv: list[str]) -> int:
    from study.plan import load_study
    from study.runner import StudyRunner

    parser = _study_parser()
    argv, overrides = parser.split(argv)
    args = parser.parse(argv)
    plan = load_study(args.config, overrides)
    runner = StudyRunner(plan, args.logdir, args.results or Path("results") / plan.name)
    if args.status:
        runner.print_status()
        return 0
    return runner.run()


def _report_parser() -> _Parser:
    from report.stats import MARGIN

    parser = _Parser(prog="cli.py report", description="Scaling table, baselines, intervals, fits and plots "
                     "from the fits and studies under a log folder.")  # fmt: skip
    parser.add_argument("--logdir", type=PATH, default=Path("logs"), help="the fits and studies to report on")
    parser.add_argument("--out", type=PATH, default=None, help="default: <logdir>/report")
    parser.add_argument("--bootstrap", type=INT, default=1000, help="bootstrap resamples for the intervals")
    parser.add_argument("--block", type=INT, default=20, help="trading days per bootstrap block (1: i.i.d.)")
    parser.add_argument("--seed", type=INT, default=0, help="seed of the resamples and the baselines")
    parser.add_argument("--margin", type=REAL, default=MARGIN, help="BCE differences whose interval lies "
                        "within ±margin are equivalent (the default: one recipe's seed spread)")  # fmt: skip
    parser.add_argument("--no_baselines", action="store_true", help="skip the baselines (no scikit-learn fits)")
    return parser


def report_main(argv: list[str]) -> int:
    from report.evaluate import Options
    from report.make import make_report

    args = _report_parser().parse(argv)
    options = Options(n_boot=args.bootstrap, block=args.block, seed=args.seed, baselines=not args.no_baselines,
                      margin=args.margin)  # fmt: skip
    return make_report(args.logdir, args.out, options)


COMMANDS = {  # name → what it does, in one line (`python cli.py --help`)
    "fit": "train a model from a config: python cli.py fit --config configs/2M.yaml",
    "validate": "score a checkpoint on the validation split",
    "test": "score a checkpoint on the test split (the only way to see test metrics)",
    "predict": "write predictions.csv for every window after the validation period",
    "summary": "size, FLOPs and memory of a config; nothing is built",
    "hpo": "Optuna search over architectures and training settings (default: configs/2M.yaml)",
    "campaign": "the HPO study of every budget × horizon cell, resumable",
    "study": "every fit of a study (arms × sizes × data × seeds), its tests and its shipped report, resumable",
    "report": "scaling table, baselines, intervals, fits and plots from the runs under logs/",
    "data": "raw sources and versioned datasets: build | verify | list | import | download",
}
MAINS = {"data": data_main, "hpo": hpo_main, "campaign": campaign_main, "study": study_main, "report": report_main}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, about in COMMANDS.items()]
    return "\n".join(["usage: python cli.py COMMAND [options]   (python cli.py COMMAND --help for its options)",
                      "", "commands:", *lines])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--help"], ["-h"], ["help"]):
        print(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        got = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"error: {got}; commands: {', '.join(COMMANDS)} (python cli.py --help)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # stderr: errors only
    if not sys.stdout.isatty():  # piped (a log file): Rich would wrap the progress bar and tables at 80 columns, or
        os.environ["COLUMNS"] = "160"  # at the width of the terminal the shell exported; a file has no width
    try:
        if argv[0] in MAINS:
            return MAINS[argv[0]](argv[1:])
        from training.lightning_cli import run_summary, run_trainer

        return run_summary(argv[1:]) if argv[0] == "summary" else run_trainer(argv)
    except USER_ERRORS as err:  # one line, exit 2, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path the user gave that cannot be read or written
        if err.filename is None:
            raise
        print(f"error: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
