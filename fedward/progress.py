"""Rich progress bars for long simulations and benchmarks."""

from __future__ import annotations

from collections.abc import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("updates  acc {task.fields[acc]}"),
        TimeElapsedColumn(),
    )


def tracker(progress: Progress) -> Callable[[str, int], Callable[[int, int, float | None], None]]:
    """A factory of per-run callbacks ``(accepted, budget, accuracy)`` driving one bar each."""

    def factory(name: str, total: int) -> Callable[[int, int, float | None], None]:
        task = progress.add_task(name, total=total, acc="-")

        def update(done: int, budget: int, accuracy: float | None) -> None:
            if accuracy is None:
                progress.update(task, completed=min(done, budget), total=budget)
            else:
                progress.update(
                    task, completed=min(done, budget), total=budget, acc=f"{accuracy:.3f}"
                )

        return update

    return factory
