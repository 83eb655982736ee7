"""What every ``interp`` command parses alike: number types that refuse out-of-range values before anything is loaded,
and the help formatter that shows each option's default."""

from __future__ import annotations

import argparse


def number(kind: type, lo, hi=None, **bounds):
    """An argparse type that parses with ``kind`` (int or float) and refuses values outside the range (NaN and
    infinities included), so a bad value stops the command before it loads or trains anything."""

    def parse(text: str):
        from interp.checks import out_of_range

        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        problem = out_of_range(value, lo, hi, integer=kind is int, **bounds)
        if problem:
            raise argparse.ArgumentTypeError(f"{text} {problem}")
        return value

    return parse


POSITIVE, NONNEGATIVE, SEED = number(int, 1), number(int, 0), number(int, 0, 2**32 - 1)
RATE = number(float, 0, lo_open=True)  # a learning rate


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` ends each option's line with its default, except where there is none to show (a flag that is off,
    an option whose help says what happens when it is not given)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)

MODEL_HELP = "packaged name, checkpoint folder, .gguf file, or Hub repo id owner/name[@revision]"
