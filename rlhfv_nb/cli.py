"""`rlhfv-nb` console command: run the pipeline, validate params, serve the demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rlhfv_nb.config import Config, ConfigError, load_config


def _stages(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one parameter (repeatable), e.g. --set ddpo.beta=0.1")


def _add_export_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`rlhfv-nb export`: its arguments (the work is `rlhfv_nb.export.run_export`)."""
    parser = commands.add_parser("export", help="save a trained model (LoRA merged) with its model card; push it")
    parser.add_argument("params", help="the run's params file, e.g. params/cpu-tiny.yaml")
    parser.add_argument("--out", required=True, type=Path, help="a new (or empty) folder to write")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", choices=("ddpo", "sft"), default="ddpo",
                       help="ddpo: the run's DDPO model at ddpo.gamma (default); sft: its SFT model")
    which.add_argument("--gamma", type=float, help="the DDPO model of this gamma, e.g. 1 (the DPO ablation)")
    parser.add_argument("--no-merge", dest="merge", action="store_false", help="keep a LoRA adapter as an adapter")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                        help="upload to this Hub model repository (token: HF_TOKEN; endpoint: HF_ENDPOINT)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhfv-nb", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute the notebooks with papermill into runs/<name>/")
    run.add_argument("params", help="a params file, e.g. params/cpu-tiny.yaml")
    run.add_argument("--only", type=_stages, default=None, help="comma-separated stages, e.g. 01,03 or 02_sft")
    run.add_argument("--force", action="store_true", help="re-run stages that finished earlier")
    _add_set(run)
    run.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")

    validate = commands.add_parser("validate", help="check a params file and print the resolved values")
    validate.add_argument("params")
    _add_set(validate)

    demo = commands.add_parser("demo", help="serve the Gradio demo: SFT vs DDPO answers side by side")
    demo.add_argument("params")
    demo.add_argument("--sft", default=None, help="SFT model folder or hub id (default: the run's)")
    demo.add_argument("--ddpo", default=None, help="DDPO model folder or hub id (default: the run's)")
    demo.add_argument("--port", type=int, default=None, help="port on demo.host (default: demo.port)")
    demo.add_argument("--share", action="store_true", help="also open a public gradio.live link")

    _add_set(_add_export_parser(commands))
    return parser


def preset_chain(path: str | Path) -> list[Path]:
    """The params file and the presets it `extends:`, nearest first (the chain `load_config` has checked)."""
    import yaml

    chain = [Path(path)]
    while isinstance(base := (yaml.safe_load(chain[-1].read_text()) or {}).get("extends"), str):
        chain.append(chain[-1].parent / base)
    return chain


def resolved_yaml(cfg: Config, params: str | Path, overrides: Sequence[str] = ()) -> str:
    """Every value of `cfg` as params YAML, headed by where the values come from.

    `model.tiny` is left out unless `model.base` is `tiny`: only the offline tiny model has that shape, and its
    defaults (cpu-tiny's) would read as if a real preset used them.
    """
    import yaml

    values = cfg.to_dict()
    chain = preset_chain(params)
    header = [f"# {chain[0]}" + "".join(f", extends {p.name}" for p in chain[1:]),
              *(f"# --set {item}" for item in overrides),
              "# valid; the values in effect (the files' over the defaults):"]
    if cfg.model.base != "tiny":
        del values["model"]["tiny"]
        header.append("# model.tiny left out: it applies only when model.base is tiny")
    return "\n".join(header) + "\n" + yaml.safe_dump(values, sort_keys=False)


def _run(args: argparse.Namespace) -> int:
    from rlhfv_nb.runner import main_run

    return main_run(args)


def _validate(args: argparse.Namespace) -> int:
    from rlhfv_nb.launch import parse_overrides

    cfg = load_config(args.params, **parse_overrides(args.set))
    print(resolved_yaml(cfg, args.params, args.set), end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rlhfv_nb.demo import Demo

    demo = {"share": True} if args.share else {}
    demo.update({"port": args.port} if args.port else {})
    Demo.from_config(load_config(args.params, demo=demo), args.sft, args.ddpo, params=args.params).launch()
    return 0


def _export(args: argparse.Namespace) -> int:
    from rlhfv_nb.export import run_export

    return run_export(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"run": _run, "validate": _validate, "demo": _demo,
                                                             "export": _export}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"rlhfv-nb: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
