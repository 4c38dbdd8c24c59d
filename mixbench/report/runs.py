"""Run directories read into configuration groups: the seeds of one configuration side by side.

A configuration is the folder that holds the ``seed<k>`` run directories
(``<data>/<model>/<method>/<schedule>``, named by :func:`mixbench.rundir.run_identity`).  Every run is read
with :func:`mixbench.rundir.read_run`; a group reports, per evaluated network, a statistic of each of its
complete seeds (:meth:`mixbench.rundir.Run.scores`: ``median`` of the metric window, ``best``, ``last``,
``best_window``).  Runs that are not complete (running or failed) stay in the group, never in its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbench.rundir import ONLINE, Run, RunDirectoryError, find_runs, read_run

HEADLINE = "median"  # the per-seed statistic a table leads with: the median top-1 of the metric window
METHOD_ORDER = ("vanilla", "mixup", "cutmix", "manifoldmix")  # baselines first, in this order


@dataclass
class RunGroup:
    """All seeds of one configuration (the folder above ``seed<k>``), in seed order."""

    path: Path
    data: str
    model: str
    method: str
    schedule: str
    runs: list[Run] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any] | None:
        """The config.yaml of one of its runs (all seeds share it but the seed); None when none has one."""
        return next((run.config for run in self.runs if run.config is not None), None)

    @property
    def complete_runs(self) -> list[Run]:
        return [run for run in self.runs if run.complete]

    @property
    def incomplete_runs(self) -> list[Run]:
        return [run for run in self.runs if not run.complete]

    @property
    def windows(self) -> list[int]:
        """The metric windows of its runs (one, unless runs of another window share the folder)."""
        return sorted({run.window for run in self.runs})

    @property
    def networks(self) -> list[str]:
        """Evaluated networks besides the online one (``ema``), in first-seen order."""
        labels = [label for run in self.runs for label in run.networks if label != ONLINE]
        return list(dict.fromkeys(labels))

    @property
    def reference_table(self) -> str | None:
        """The published table its config.yaml names (set by experiment files), if any."""
        return (self.config or {}).get("reference_table")

    def values(self, statistic: str = HEADLINE, network: str = ONLINE) -> list[float]:
        """A statistic of every complete seed that evaluated ``network`` (unknown values are left out)."""
        found = [run.scores(network)[statistic] for run in self.complete_runs if network in run.networks]
        return [value for value in found if value is not None]


def _group_names(run: Run) -> tuple[str, str, str, str]:
    """The four folder names above ``seed<k>`` (with their option suffixes, e.g. ``r18,width=16``); the
    summary's names when the run directory is not laid out as
    ``<data>/<model>/<method>/<schedule>/seed<k>``."""
    run_dir = run.path.resolve()
    parts = run_dir.parent.parts
    if run_dir.name.startswith("seed") and len(parts) >= 5:
        return parts[-4], parts[-3], parts[-2], parts[-1]
    data, model, method, schedule = run.group_names
    return data, model, method, schedule


def _method_rank(method: str) -> int:
    base = method.split(",")[0]
    return METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)


def _group_sort_key(group: RunGroup) -> tuple:
    return (group.data, group.model, group.schedule, _method_rank(group.method), group.method)


def read_runs(root: Path, damaged: list[tuple[Path, str]] | None = None) -> list[RunGroup]:
    """Every configuration under ``root`` (``root`` may also be one configuration or one run directory),
    sorted by data, model, schedule, then method (baselines first).

    A run directory whose files cannot be read raises :class:`~mixbench.rundir.RunDirectoryError`, unless a
    ``damaged`` list is given: then it is left out and ``(path, the one-line reason)`` is appended there.
    """
    groups: dict[Path, RunGroup] = {}
    for run_dir in find_runs(Path(root)):
        try:
            run = read_run(run_dir)
        except RunDirectoryError as error:
            if damaged is None:
                raise
            damaged.append((run_dir, str(error)))
            continue
        configuration = run.path.parent
        if configuration not in groups:
            groups[configuration] = RunGroup(configuration, *_group_names(run))
        groups[configuration].runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda run: run.seed)
    return sorted(groups.values(), key=_group_sort_key)
