"""What every entry point in ``jobs/`` shares: a parent argument parser and one-line errors with exit code 2.

    parser = job_parser(__doc__, ray=True)       # --debug, --s3-endpoint-url, and --address for Ray jobs
    ...
    sys.exit(run_job(main, args))                # ValueError / FileNotFoundError -> one line on stderr, exit 2

Importing this module does nothing (no logging set-up, no environment reads).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

logger = logging.getLogger("dcm")

# Exit codes: 2 is argparse's own code for bad input, so every "your input is wrong" failure looks the same.
EXIT_BAD_INPUT = 2
# 128 + SIGINT, what a shell reports for a command stopped with Ctrl-C.
EXIT_INTERRUPTED = 130
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"
# Errors that mean "the input is wrong" (a field, a path, a model folder): printed as one line, not a traceback.
INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default in ``--help`` and keeps the module docstring's line breaks."""


def job_parser(description: str | None, *, ray: bool = False) -> argparse.ArgumentParser:
    """The parent parser of every job: ``--debug``, ``--s3-endpoint-url`` and, for Ray jobs, ``--address``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "--s3-endpoint-url", help="S3-compatible endpoint for s3:// locations (MinIO, R2); else $AWS_ENDPOINT_URL"
    )
    if ray:
        parser.add_argument(
            "--address", help="Ray cluster address; else $RAY_ADDRESS, else a local Ray bound to 127.0.0.1"
        )
    return parser


def setup_job(args: argparse.Namespace) -> None:
    """Logging, and the S3 endpoint for every library that reads ``AWS_ENDPOINT_URL`` (boto3, pyarrow, Ray workers)."""
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format=LOG_FORMAT)
    if getattr(args, "s3_endpoint_url", None):
        os.environ["AWS_ENDPOINT_URL"] = args.s3_endpoint_url


def one_line(err: BaseException) -> str:
    """The error as one line: its message with line breaks folded (a traceback-free ``error: ...`` for the user)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def run_job(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs ``main(args)``; bad input becomes one line on stderr and exit code 2 (``--debug`` re-raises, so the
    traceback shows); Ctrl-C exits with 130 without a traceback."""
    setup_job(args)
    try:
        return main(args)
    except INPUT_ERRORS as err:
        if args.debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
