"""`rlhfv-nb` console command: run the pipeline, validate params, serve the demo."""

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

    demo = commands.add_parser("demo", help="serve the Gradio demo: SFT vs DDPO answers side by side")
    demo.add_argument("params")
    demo.add_argument("--sft", default=None, help="SFT model folder or hub id (default: the run's)")
    demo.add_argument("--ddpo", default=None, help="DDPO model folder or hub id (default: the run's)")
    demo.add_argument("--port", type=int, default=None, help="port on demo.host (default: demo.port)")
    demo.add_argument("--share", action="store_true", help="also open a public gradio.live link")
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
        if args.command == "demo":
            from rlhfv_nb.demo import Demo

            demo = {"share": True} if args.share else {}
            demo.update({"port": args.port} if args.port else {})
            Demo.from_config(load_config(args.params, demo=demo), args.sft, args.ddpo).launch()
            return 0
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"rlhfv-nb: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
