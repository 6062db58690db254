"""Command line: python -m gpurnn {info,demo,train,gradflow} ...

Each subcommand lives in its own module exposing add_arguments(parser) and run(args);
they are imported only when chosen, so `info` works without torch. run() raises
UsageError for a bad value it finds (a file, a device): the command's usage error, exit 2.
"""
import argparse
import importlib
import sys

from .arguments import UsageError

COMMANDS = {
    "info": ("gpurnn.info", "versions, devices and usable backends"),
    "demo": ("gpurnn.demo", "a short forward/backward on the CPU, checked against torch.nn"),
    "train": ("gpurnn.train", "train Elman, LSTM and GRU on generated tasks (the main job)"),
    "gradflow": ("gpurnn.diagnostics", "plot how the gradient decays over time lags"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m gpurnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        sub_parser.set_defaults(module=module)
        if argv and argv[0] == name:   # import only the chosen command's module
            importlib.import_module(module).add_arguments(sub_parser)
    args = parser.parse_args(argv)
    try:
        importlib.import_module(args.module).run(args)
    except UsageError as e:
        sub.choices[args.command].error(str(e))


if __name__ == "__main__":
    main()
