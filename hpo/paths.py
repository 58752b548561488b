"""Names and places a study or campaign writes to, checked before anything is written: a name that becomes a
folder stays one folder inside its parent, a file goes where a file can go, a storage URL is one Optuna can open."""

from __future__ import annotations

import os
import re
from pathlib import Path

from common.errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]{0,199}")  # what study and campaign names may contain


def check_name(name: object, what: str, hint: str = "") -> str:
    """A name that becomes one folder (`logs/hpo/<name>/`): letters, digits and `._+=@-`, not starting with a dot
    or dash, at most 200 characters; so it can never be `..`, absolute, or reach another folder."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(
            f"{what} {name!r}: use letters, digits and . _ + = @ - (starting with a letter or digit, at most "
            f"200 characters): it names one folder{hint}"
        )
    return name


def check_folder(folder: Path, what: str) -> None:
    """`folder` exists as a writable folder or can be made: its nearest existing ancestor is a writable folder."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise ConfigError(f"{what}: {existing} is a broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: no permission to write in {existing}")


def check_file(path: Path, what: str) -> None:
    """`path` can be written as a file: not a folder, and its folder exists or can be made."""
    path = Path(path)
    if path.is_dir() or not path.name:
        raise ConfigError(f"{what} {path}: is a folder; name a file")
    check_folder(path.parent, f"{what} {path}")


def created_folders(folder: Path) -> list[Path]:
    """The folders that `folder.mkdir(parents=True)` would create, deepest first (to remove them again)."""
    missing = []
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///…` URL (None for other databases)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


def check_storage(url: str, option: str = "--storage", create: bool = False) -> None:
    """An RDB URL Optuna can open (its driver is checked when it connects); a SQLite one names a file in a writable
    folder. Nothing is created. The folder of a URL the user typed must exist (`create` False): one slash more or
    less (sqlite:///rel.db is relative to the working folder, sqlite:////abs.db absolute) moves the study
    elsewhere, and a typo must not silently make folders there; the study's own default folder is made."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "e.g. sqlite:///logs/hpo/study.db or postgresql://user@host/finscale"
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise ConfigError(
            f"{option} {url!r}: not a database URL ({' '.join(str(err).split())[:150]}); {example}"
        ) from None
    if parsed.get_backend_name() != "sqlite":
        try:
            parsed.get_dialect().import_dbapi()
        except ImportError as err:
            extra = " (pip install -e '.[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
            raise ConfigError(f"{option} {url!r}: its database driver is not installed: {err}{extra}") from None
        return
    if not parsed.database or parsed.database == ":memory:":
        raise ConfigError(f"{option} {url!r}: a SQLite storage is a file (sqlite:///path/study.db); {example}")
    if parsed.database.startswith("file:"):
        return  # SQLite's URI form: its own options, checked when it opens
    path = Path(parsed.database)
    if path.exists() and not path.is_file():
        raise ConfigError(f"{option} {url!r}: {path} is not a file")
    if create:
        check_folder(path.parent, f"{option} {url!r}")
        return
    folder = Path(os.path.abspath(path.parent))
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {url!r}: {folder} is a file, not a folder")
    if not folder.is_dir():
        raise ConfigError(
            f"{option} {url!r}: folder {folder} does not exist (sqlite:///path is relative to the working folder, "
            f"sqlite:////path absolute); create it first (mkdir -p '{folder}') or leave --storage out"
        )
    if not os.access(folder, os.W_OK | os.X_OK) or path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{option} {url!r}: no permission to write {path if path.exists() else 'in ' + str(folder)}")
