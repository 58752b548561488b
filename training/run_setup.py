"""Run setup shared by every command that trains or evaluates: config checks, run naming, sizing.

Everything here runs on the parsed config, before any model or data is built.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from common.errors import ConfigError, DataError


def size_from_config(config):
    """RunSize, available bytes and device name for a parsed fit config, without building anything."""
    import torch

    from datamodules.market_datamodule import input_columns
    from lightning_modules.patchtst import PatchTSTConfig
    from sizing.memory import available_memory, parse_bytes
    from sizing.run_size import size_run

    data, trainer = config.data, config.trainer
    n_channels = len(input_columns(data.tier, data.features, data.tickers, data.asset_channels))
    gpu = on_gpu(trainer)
    devices = trainer.devices
    count = (torch.cuda.device_count() if gpu else 1) if devices in ("auto", -1, "-1") else devices
    count = len(count) if isinstance(count, list) else int(count)
    shards = count * int(trainer.get("num_nodes") or 1) if "fsdp" in str(trainer.strategy).lower() else 1
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


def on_gpu(trainer) -> bool:
    """The run trains on CUDA GPUs: asked for, or `auto` where one is."""
    import torch

    accelerator = str(trainer.accelerator).lower()
    return accelerator in ("gpu", "cuda") or accelerator == "auto" and torch.cuda.is_available()


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


def name_run(subcommand: str, config) -> list[Path]:
    """Place the run and claim its folder; the folders this made, deepest first (removed if the run is refused).

    fit → logs/<experiment>/<time>-h<h>-s<seed>; fit resuming a checkpoint of a run → that run; validate/test/predict
    of a run's checkpoint → a sub-folder `<command>-<time>` of that run. A new folder is claimed with an exclusive
    mkdir, so two runs started in the same second never share one (the second takes `…-2`), and a fit never writes
    into an existing folder it was not asked to resume. The names are checked (one plain name each) and the log
    folder must be writable."""
    if subcommand != "fit" and not config.get("ckpt_path"):
        raise ConfigError(f"{subcommand} needs --ckpt_path (a checkpoint written by fit)")
    logger = config.trainer.get("logger")
    if not hasattr(logger, "init_args") or not str(logger.class_path).endswith("TensorBoardLogger"):
        return []
    args = logger.init_args
    for key in ("name", "version", "sub_dir"):
        if args.get(key) not in (None, ""):
            plain_name(str(args.get(key)), f"trainer.logger.init_args.{key}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    checkpoint = Path(config.get("ckpt_path") or "")
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    if run_dir is not None:
        args.save_dir, args.name, args.version = str(run_dir.parent.parent), run_dir.parent.name, run_dir.name
        if subcommand == "fit":
            check_writable(run_dir)
            return []  # the resumed run's own folder
        args.sub_dir, created = claim_folder(run_dir, f"{subcommand}-{stamp}")
        return created
    experiment = Path(args.save_dir or "logs") / (args.name or "")
    check_writable(experiment)
    if args.version:  # named by the user (or an hpo trial): a new folder, never another run's
        return claim_folder(experiment, str(args.version), numbered=False)[1]
    base = f"{subcommand}-{stamp}"
    if subcommand == "fit":
        base = f"{stamp}-h{config.data.horizon}-s{config.seed_everything}"
    args.version, created = claim_folder(experiment, base)
    return created


def claim_folder(parent: Path, base: str, numbered: bool = True) -> tuple[str, list[Path]]:
    """Create parent/base, or parent/base-2, base-3, … if taken (`numbered`), with an exclusive mkdir: the name
    taken, and the folders made (it and any missing parents, deepest first). The other ranks of a multi-process run
    claim nothing: rank 0 writes the run, and Lightning hands its checkpoint folder to every rank."""
    from lightning.pytorch.utilities import rank_zero_only

    check_writable(parent / base)
    if getattr(rank_zero_only, "rank", 0) > 0:
        return base, []
    missing = [p for p in (parent, *parent.parents) if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    for name in (base, *(f"{base}-{i}" for i in range(2, 1000))) if numbered else (base,):
        try:
            (parent / name).mkdir()
        except FileExistsError:
            if not numbered:
                raise ConfigError(f"{parent / name} exists: a run never writes into another run's folder; to continue "
                                  f"that fit give --ckpt_path {parent / name}/checkpoints/last.ckpt, to run its config "
                                  "again --trainer.logger.init_args.version null") from None  # fmt: skip
            continue
        return name, [parent / name, *missing]
    raise ConfigError(f"{parent}: no free run name after {base}-999")


def run_folder(config) -> Path | None:
    """The folder a parsed (and named) run writes into, or None without a TensorBoard logger."""
    logger = config.trainer.get("logger")
    if not hasattr(logger, "init_args") or not str(logger.class_path).endswith("TensorBoardLogger"):
        return None
    args = logger.init_args
    parts = [args.save_dir or "logs", args.name or "", str(args.version or ""), args.get("sub_dir") or ""]
    return Path(*[part for part in parts if part])


def plain_name(name: str, what: str) -> str:
    """A user-given name that becomes one folder or file name: no separators, no `..`, no hidden or odd names."""
    if not name or name in (".", "..") or name.startswith((".", "-")) or any(c in name for c in "/\\\0") \
            or len(name) > 200 or not name.isprintable():  # fmt: skip
        raise ConfigError(f"{what}: {name!r} is not a plain name (letters, digits, '-', '_', '.'; no '/' or '..')")
    return name


def check_writable(folder: Path | None) -> None:
    """The folder exists and is writable, or can be created: its nearest existing parent is a writable folder."""
    if folder is None:
        return
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor or "."))
    if not existing.is_dir():
        raise ConfigError(f"cannot write {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {folder}: {existing} is not writable")


def resolve_last(config) -> Path:
    """`--ckpt_path last`: the newest last.ckpt of this experiment's runs with the same horizon and seed
    (`…-h1-s0`, `…-h1-s0-2`); any other value is returned as it is."""
    if config.get("ckpt_path") != "last":
        return Path(config.ckpt_path)
    logger = config.trainer.get("logger")
    args = logger.init_args if hasattr(logger, "init_args") else {}
    experiment = Path(args.get("save_dir") or "logs") / (args.get("name") or "")
    suffix = f"-h{config.data.horizon}-s{config.seed_everything}"
    candidates = [p for p in experiment.glob("*/checkpoints/last.ckpt")
                  if p.parent.parent.name.endswith(suffix) or f"{suffix}-" in p.parent.parent.name]  # fmt: skip
    if not candidates:
        raise ConfigError(f"--ckpt_path last: no {experiment}/<run>{suffix}/checkpoints/last.ckpt to resume")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def config_files(argv: list[str]) -> list[str]:
    """The values of every `--config FILE` and `--config=FILE` in argv, in order ("" for a trailing --config)."""
    return [arg.split("=", 1)[1] if "=" in arg else (argv[at + 1] if at + 1 < len(argv) else "")
            for at, arg in enumerate(argv) if arg == "--config" or arg.startswith("--config=")]  # fmt: skip


def check_config_files(argv: list[str]) -> list[str]:
    """Every `--config FILE` names a readable, non-empty YAML mapping (jsonargparse's own errors say little)."""
    import yaml

    for value in config_files(argv):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"config not found: {value}" if not path.exists() else f"config {value} is not a file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"config {value} is not readable YAML ({_one_line(err)})") from None
        if loaded is None:
            raise ConfigError(f"config {value} is empty")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {value} must be a mapping of keys (e.g. `data:`, `model:`), got a "
                              f"{type(loaded).__name__}")  # fmt: skip
    return argv


DATA_KEYS = ("tickers", "tier", "version", "horizon", "threshold", "label_price", "context_length", "features",
             "splits", "scaling", "asset_channels")  # fmt: skip


MODEL_KEYS = ("net", "optim", "pos_weight", "baseline_start", "baseline_C")  # what a fit resumes as it was trained


# model settings added after checkpoints were first written, with the value every earlier checkpoint trained with:
# a checkpoint from before µP (or its depth rule) is the standard parametrization, whatever today's configs say
ADDED_SINCE = {"net": {"mup_base_width": None, "mup_base_depth": None}}


def check_checkpoint(path: Path, config, subcommand: str) -> None:
    """The checkpoint exists, is a fit's, was trained on the data this config describes (labels, splits, channels)
    and is the model it describes: its architecture (`model.net`), and for a resumed fit every model setting.
    Lightning would otherwise replace the config's model with the checkpoint's silently, and file the run under
    the config's experiment."""
    import torch

    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for damaged files
        raise ConfigError(f"{path}: unreadable checkpoint ({type(err).__name__})") from None
    if not isinstance(loaded, dict) or not {"state_dict", "pytorch-lightning_version"} <= set(loaded):
        raise ConfigError(f"{path}: not a checkpoint written by `cli.py fit` (no state_dict or Lightning version)")
    saved = current_data_keys(loaded.get("datamodule_hyper_parameters", {}))
    current = current_data_keys({key: _plain(config.data.get(key)) for key in DATA_KEYS})
    differ = [f"data.{k}: checkpoint {_plain(saved[k])!r}, config {current[k]!r}" for k in DATA_KEYS
              if k in saved and _plain(saved[k]) != current[k]]  # fmt: skip
    if differ:
        raise ConfigError(f"{path} was trained on other data settings ({'; '.join(differ)}); use that run's "
                          "config.yaml or matching overrides")  # fmt: skip
    trained = loaded.get("hyper_parameters", {})
    for section, added in ADDED_SINCE.items():  # an older checkpoint trained with what was then the only behaviour
        if isinstance(trained.get(section), dict):
            trained[section] = added | trained[section]
    for key in MODEL_KEYS if subcommand == "fit" else ("net",):
        difference = _first_difference(f"model.{key}", _plain(trained.get(key)), _plain(config.model.get(key)))
        if key in trained and difference:
            raise ConfigError(f"{path} is another model ({difference}); use that run's config.yaml (in its folder) "
                              "or matching overrides")  # fmt: skip


def _first_difference(name: str, saved, configured) -> str | None:
    """`name.key: checkpoint …, config …` for the first setting the checkpoint holds that the config sets otherwise
    (a setting added since the checkpoint was written is not a difference), or None."""
    if isinstance(saved, dict) and isinstance(configured, dict):
        return next((f"{name}.{k}: checkpoint {v!r}, config {configured.get(k)!r}" for k, v in saved.items()
                     if k in configured and v != configured[k]), None)  # fmt: skip
    return None if saved == configured else f"{name}: checkpoint {saved!r}, config {configured!r}"


def current_data_keys(data: dict) -> dict:
    """Data settings in today's spelling: tickers as registered, `dataset` (before pooling) as tickers and tier,
    splits with a train_start, one version for all tickers as a number."""
    from datamodules.assets import tickers_of

    data = dict(data)
    if "dataset" in data and "tickers" not in data:
        name = str(data.pop("dataset"))
        data["tickers"], data["tier"] = [name.split(".")[0]], name.split(".")[-1]
    if data.get("tickers") is not None:
        data["tickers"] = tickers_of(data["tickers"])
    version = data.get("version")
    if isinstance(version, dict) and len(set(version.values())) == 1 and set(version) >= set(data.get("tickers", [])):
        data["version"] = next(iter(version.values()))
    data.setdefault("scaling", "pooled")
    data.setdefault("asset_channels", False)
    if isinstance(data.get("splits"), dict):
        splits = {"train_start": None, **data["splits"]}
        data["splits"] = {k: None if v is None else _iso(v) for k, v in splits.items()}
    return data


def _iso(day) -> str:
    """A split date in the one spelling the data module stores (`datamodules.splits.iso_date`), so 2014/12/31 in an
    older checkpoint or config.yaml matches 2014-12-31; a value that is no date stays as it was (and differs)."""
    from common.errors import DataError
    from datamodules.splits import iso_date

    try:
        return iso_date(day)
    except DataError:
        return str(day)


def _plain(value):
    """Namespaces, dataclass dicts and lists as plain comparable values."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    return list(value) if isinstance(value, tuple | list) else value
