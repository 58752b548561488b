"""A study's worker: one process that runs `cli.py` commands one after another, each with its output in its own
file, so Python, torch and Lightning start once per worker instead of once per fit (the start-up was most of a
small fit's time: bench/RESULTS.md, "The answer: where the time goes").

The study writes one job per line on the worker's stdin, {"argv": [...], "log": path}, and reads one line per job
back, {"code": exit code}. SIGTERM during a fit stops it at its next batch, as for `cli.py fit` (the fit's stop
callback holds the signal while it trains); between jobs it ends the worker.

    python -m study.worker      (started by `cli.py study`; not a user command)
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def run(argv: list[str], log: str) -> int:
    """`cli.py ARGV` in this process, its stdout and stderr appended to `log`."""
    import cli

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)
    try:
        return int(cli.main(list(argv)) or 0)
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else 1
    except BaseException:  # a crash of one job is that job's failure (its traceback in its log), not the worker's
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def main() -> int:
    reply = os.fdopen(os.dup(1), "w", buffering=1)  # the study reads one line per job here
    os.dup2(2, 1)  # anything printed between jobs goes to the worker's own log, never into the replies
    import lightning.pytorch  # noqa: F401 - the start-up paid once, before the first job
    import torch  # noqa: F401

    import training.lightning_cli  # noqa: F401

    for line in sys.stdin:
        job = json.loads(line)
        reply.write(json.dumps({"code": run(job["argv"], job["log"])}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
