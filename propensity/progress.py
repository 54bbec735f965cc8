"""Progress of long commands: what is running now and for how long.

On a terminal a live display (spinner, step, current detail, elapsed time); elsewhere (CI logs,
pipes) one plain line when a step starts, when its detail changes and when it ends, each with the
elapsed time, so a log shows where the minutes went.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


class StepProgress:
    """Reports steps (`with progress.step("Training"):`) and what each is doing (`progress.detail`)."""

    def __init__(self, console: Console | None = None, live: bool | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live
        self._display: Progress | None = None
        self._task: TaskID | None = None
        self._message = ""
        self._step_started = 0.0
        self._started = time.monotonic()

    def _elapsed(self) -> str:
        return f"[{time.monotonic() - self._started:6.1f}s]"

    def _print(self, text: str) -> None:
        self.console.print(f"{self._elapsed()} {text}", highlight=False, soft_wrap=True, markup=False)

    @contextmanager
    def step(self, message: str) -> Iterator[None]:
        """One step of a command; nested steps are not supported (details are)."""
        self._message, self._step_started = message, time.monotonic()
        if not self.live:
            self._print(message)
            yield
            self._print(f"done: {message} ({time.monotonic() - self._step_started:.1f}s)")
            return
        display = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description}"),
            TextColumn("[dim]{task.fields[detail]}[/]"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        with display:
            self._display, self._task = display, display.add_task(message, total=1, detail="")
            try:
                yield
                display.update(self._task, completed=1, detail="")
            finally:
                self._display = self._task = None

    def detail(self, text: str) -> None:
        """What the current step is doing now, e.g. the pipeline task that just started."""
        if self._display is not None and self._task is not None:
            self._display.update(self._task, detail=text)
        elif not self.live:
            self._print(f"{self._message}: {text}")
