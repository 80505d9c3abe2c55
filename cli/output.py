"""How every fedcare command reports a problem: one line on stderr, as written.

A message names files, rows and columns; rich must neither wrap it at the terminal's
width (a path broken over two lines cannot be copied, and logs keep the breaks) nor read
square brackets in it as markup (a feature called ``[ml]`` would vanish).
"""

import typer
from rich.console import Console
from rich.text import Text

errors = Console(stderr=True, soft_wrap=True, highlight=False)


def print_error(message: object) -> None:
    """Print ``error: <message>`` on stderr, the message verbatim."""
    errors.print(Text.assemble(("error:", "red"), " ", str(message)))


def print_warning(message: object) -> None:
    """Print ``warning: <message>`` on stderr, the message verbatim."""
    errors.print(Text.assemble(("warning:", "yellow"), " ", str(message)))


def fail(message: object, code: int = 1) -> typer.Exit:
    """Print the error and return the exit to raise, e.g. ``raise fail(err, 2) from None``.

    Parameters
    ----------
    message
        What went wrong and where (file, row, field), as the user should read it.
    code
        The process's exit status: 1 for a failed command, 2 for bad input or usage.
    """
    print_error(message)
    return typer.Exit(code)
