"""``python3 -m tracekit.workload dirty-log ...``: the workload without typer (standard library only).

Same options, output, layout file, exit codes and error line as ``tracekit workload dirty-log`` (0
success; 1 a verification mismatch or any other WorkloadError; 2 bad command-line syntax; each failure
one ``tracekit: error: ...`` line on stderr), for minimal guests that have only Python's standard library.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from tracekit.errors import TracekitError, error_line
from tracekit.workload.command import DESCRIPTION, EXAMPLES, OPTION_HELP, build_options, dirty_log_command

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with its syntax errors in the command line's one error style (not a usage block)."""

    def error(self, message: str) -> NoReturn:
        print(error_line(f"{message} (see '{self.prog} -h')"), file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python3 -m tracekit.workload", description="The built-in KVM workload.")
    commands = parser.add_subparsers(dest="command", required=True)
    dirty = commands.add_parser(
        "dirty-log",
        description=DESCRIPTION,
        epilog="examples:\n  "
        + "\n  ".join(e.replace("tracekit workload", "python3 -m tracekit.workload") for e in EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = dirty.add_argument
    add("-v", "--vcpus", type=int, default=1, help=OPTION_HELP["vcpus"])
    add("-b", "--bytes-per-vcpu", default="64M", help=OPTION_HELP["bytes_per_vcpu"])
    add("-i", "--iterations", type=int, default=4, help=OPTION_HELP["iterations"])
    add("-s", "--backing", default="anonymous", help=OPTION_HELP["backing"])
    add("-w", "--write-percent", type=int, default=100, help=OPTION_HELP["write_percent"])
    add("-a", "--random-order", action="store_true", help=OPTION_HELP["random_order"])
    add("-r", "--seed", type=int, default=1, help=OPTION_HELP["seed"])
    add("-g", "--no-manual-protect", action="store_true", help=OPTION_HELP["no_manual_protect"])
    add("-x", "--memslots", type=int, default=1, help=OPTION_HELP["memslots"])
    add("--log-mode", default=None, help=OPTION_HELP["log_mode"])
    add("--no-initially-set", action="store_true", help=OPTION_HELP["no_initially_set"])
    add("--guest-page-size", default="2m", help=OPTION_HELP["guest_page_size"])
    add("--ring-entries", type=int, default=None, help=OPTION_HELP["ring_entries"])
    add("--eager-split-chunk", default=None, metavar="SIZE", help=OPTION_HELP["eager_split_chunk"])
    add("--json", action="store_true", dest="as_json", help=OPTION_HELP["json"])
    add("--layout", default=None, help=OPTION_HELP["layout"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    args.pop("command")
    as_json = args.pop("as_json")
    layout = args.pop("layout")
    try:
        options = build_options(**args)
        dirty_log_command(options, as_json=as_json, layout_path=layout, out=lambda line: print(line, flush=True))
    except TracekitError as error:
        print(error_line(str(error)), file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. | head): no traceback
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
