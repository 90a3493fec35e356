"""The rich Console the subcommands print with: a closed stdout goes up to the CLI."""

from __future__ import annotations

from rich.console import Console


class CommandConsole(Console):
    """rich's Console, except that a reader who leaves (``| head``) raises BrokenPipeError up to
    ``canvoy.cli.main``, which ends every subcommand the same quiet way (rich would exit 1)."""

    def on_broken_pipe(self) -> None:
        """Re-raise the BrokenPipeError being handled.

        Raises:
            BrokenPipeError: always.
        """
        self.quiet = True  # nothing more for a pipe that is gone
        raise  # noqa: PLE0704 - rich calls this from inside its own ``except BrokenPipeError``
