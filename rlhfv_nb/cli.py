"""`rlhfv-nb` console command: run the pipeline, validate params."""

from __future__ import annotations

import argparse
import sys

from rlhfv_nb.config import ConfigError, load_config


def _stages(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhfv-nb", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute the notebooks with papermill into runs/<name>/")
    run.add_argument("params", help="a params file, e.g. params/cpu-tiny.yaml")
    run.add_argument("--only", type=_stages, default=None, help="comma-separated stages, e.g. 01,03 or 02_sft")
    run.add_argument("--force", action="store_true", help="re-run stages that finished earlier")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one parameter (repeatable), e.g. --set ddpo.beta=0.1")
    run.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")

    validate = commands.add_parser("validate", help="check a params file and print the resolved values")
    validate.add_argument("params")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from rlhfv_nb.runner import main_run

            return main_run(args)
        if args.command == "validate":
            import yaml

            print(yaml.safe_dump(load_config(args.params).to_dict(), sort_keys=False))
            return 0
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"rlhfv-nb: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
