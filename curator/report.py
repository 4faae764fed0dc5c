"""The one run report: what a recipe run or a scheduled run did, stage by stage.

``StageReport`` is built from a stage's outcome by one function (``from_outcome``), for
recipes (``curator.runner``) and schedules (``curator.schedule.run``) alike. ``RunReport``
is stored as the run's result (``to_dict``), read back from it (``from_dict``: also the
results stored before this report existed) and worded here only: ``lines()`` (the CLI),
``summary()`` (one line: the schedule history, the app), ``headline()`` (a worker's log)
and ``stage_table()`` (the demo). The CLI, the app and the demo print these words; none
of them words a run itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from curator.stages import StageOutcome

# Columns of ``table_lines`` that read left to right (names); the rest are numbers.
_LEFT = {"stage", "selection"}


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' * (n != 1)}"


@dataclass
class StageReport:
    """One stage of a run: its selection, counts, time, the quality prior's drops, mask."""

    name: str                            # the recipe's stage name (a schedule: the stage)
    stage: str
    selection_id: str
    method: str = ""
    function: str | None = None
    version: int | None = None
    parent: str | None = None            # the selection it was conditioned on
    n_pool: int = 0
    n_selected: int = 0
    objective: float | None = None
    seconds: float = 0.0
    reused: bool = False                 # an identical earlier selection, not a new one
    pairs_computed: int = 0
    pairs_reused: int = 0
    prior_dropped: int | None = None     # rows the quality prior left out; None: no prior
    zero_gain_picks: int | None = None   # DELIFT picks at zero gain; None: no set function
    mask: dict[str, Any] | None = None   # the mask's density info, when it has one
    export: str | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_outcome(cls, name: str, outcome: StageOutcome, seconds: float) -> StageReport:
        """The one builder of a stage's record (the mask and export are added after)."""
        r = outcome.record
        config = r.config or {}
        prior = config.get("quality")
        return cls(
            name=name, stage=r.stage, selection_id=outcome.selection_id, method=r.method,
            function=r.function, version=r.version, parent=r.parent, n_pool=r.n_pool,
            n_selected=r.n_selected, objective=r.objective, seconds=seconds,
            reused=outcome.reused,
            pairs_computed=sum(s.n_computed for s in outcome.scoring),
            pairs_reused=sum(s.n_reused for s in outcome.scoring),
            prior_dropped=int(prior["n_dropped"]) if prior else None,
            zero_gain_picks=int(config.get("zero_gain_picks", 0))
            if r.objective is not None else None,
            notes=list(outcome.notes))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageReport:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def summary(self) -> str:
        """One clause: "continual selection sel-0002 (parent sel-0001): 3 of 6"."""
        head = "" if self.name in ("", self.stage) else f"{self.name}: "
        return (f"{head}{self.stage} selection {self.selection_id}"
                + (f" (parent {self.parent})" if self.parent else "")
                + f": {self.n_selected:,} of {self.n_pool:,}"
                + (" (reused)" if self.reused else ""))

    def line(self) -> str:
        """Everything about the stage, on one line (``RunReport.lines``)."""
        parts = [self.summary()]
        if self.objective is not None:
            parts.append(f"objective {self.objective:.3f}")
        if self.pairs_computed or self.pairs_reused:
            parts.append(f"pairs scored {self.pairs_computed:,}, reused {self.pairs_reused:,}")
        if self.prior_dropped is not None:
            parts.append(f"prior left out {self.prior_dropped:,}")
        if self.mask is not None:
            parts.append(f"mask {mask_words(self.mask)}")
        parts.append(f"{self.seconds:.1f} s")
        return "; ".join(parts) + (f" -> {self.export}" if self.export else "")

    def row(self) -> dict[str, str]:
        """The stage as a row of ``table_lines`` (the demo's summary adds its columns)."""
        return {"stage": self.name, "ver": "-" if self.version is None else str(self.version),
                "selection": self.selection_id, "pool": str(self.n_pool),
                "picked": str(self.n_selected),
                "objective": "-" if self.objective is None else f"{self.objective:.2f}",
                "zero gain": "-" if self.zero_gain_picks is None else str(self.zero_gain_picks),
                "prior left out": "-" if self.prior_dropped is None else str(self.prior_dropped),
                "pairs": str(self.pairs_computed), "time": f"{self.seconds:.1f}s"}


def mask_words(mask: dict[str, Any]) -> str:
    """A mask's size: "1,234 of 56,789 parameters (2.17% of the model, 10.0% of its linear
    layers)"; "stored" for a mask recorded before its size was kept with the run."""
    overall = mask.get("overall") or {}
    if "selected" not in overall:
        return "stored"
    scope = mask.get("scope_density")
    return (f"{overall['selected']:,} of {overall['total']:,} parameters "
            f"({overall['density']:.2%} of the model"
            + (f", {scope:.1%} of its linear layers)" if scope is not None else ")"))


def table_lines(rows: list[dict[str, str]], columns: list[str] | None = None) -> list[str]:
    """Rows as an aligned table with a header (names left, numbers right)."""
    columns = columns or (list(rows[0]) if rows else [])
    width = {c: max([len(c), *(len(r.get(c, "")) for r in rows)]) for c in columns}

    def cells(values: dict[str, str]) -> str:
        return " ".join(values.get(c, "").ljust(width[c]) if c in _LEFT
                        else values.get(c, "").rjust(width[c]) for c in columns).rstrip()

    return [cells({c: c for c in columns}), *(cells(r) for r in rows)]


@dataclass
class RunReport:
    """What one run did: a recipe run (kind "curate") or a scheduled run ("schedule")."""

    run_id: str
    name: str = ""                       # the schedule, or the recipe's dataset
    kind: str = "curate"                 # curate (a recipe) or schedule
    status: str = "running"              # done or failed
    trigger: str | None = None           # schedules: due or manual
    started_at: str = ""                 # clock time, ISO
    finished_at: str | None = None
    files_new: list[str] = field(default_factory=list)   # ingested by this run
    files_seen: int = 0                  # already ingested (same content), skipped
    files_waiting: list[str] = field(default_factory=list)  # still being written
    files_bad: list[dict[str, str]] = field(default_factory=list)  # path, reason
    version: int | None = None           # the version this run created (schedules)
    pool_version: int | None = None      # the version a schedule selected from
    resumed: str | None = None           # an unfinished earlier run whose work this one used
    n_quarantined_rows: int = 0
    parent: str | None = None            # what a schedule conditioned on (kept when idle)
    stages: list[StageReport] = field(default_factory=list)
    export: str | None = None            # a schedule's export folder
    note: str | None = None
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per step, and total

    # -- what other code reads ---------------------------------------------------------------

    @property
    def selection(self) -> StageReport | None:
        """The run's last selection (a schedule makes at most one)."""
        return self.stages[-1] if self.stages else None

    @property
    def selection_id(self) -> str | None:
        return self.stages[-1].selection_id if self.stages else None

    @property
    def schedule(self) -> str:
        return self.name

    @property
    def ingested(self) -> list[str]:
        """The inputs a recipe run ingested (skipped ones, by checksum, are not here)."""
        return self.files_new

    @property
    def total_seconds(self) -> float:
        return float(self.seconds.get("total", 0.0))

    def to_dict(self) -> dict[str, Any]:
        """The run's stored result."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunReport:
        """A stored result (or a history row holding one) as a report. Results stored by
        earlier versions read too: a schedule's outcome had its one selection's fields
        flat and its name as ``schedule``; a recipe's ``ingested`` and ``seconds`` total."""
        known = {f.name for f in fields(cls)} - {"stages", "seconds", "files_new"}
        report = cls(**{k: v for k, v in d.items() if k in known and v is not None})
        if not report.name and d.get("schedule"):
            report.name, report.kind = d["schedule"], "schedule"
        report.files_new = list(d.get("files_new") or d.get("ingested") or [])
        seconds = d.get("seconds")
        report.seconds = dict(seconds) if isinstance(seconds, dict) else \
            {"total": float(seconds)} if isinstance(seconds, (int, float)) else {}
        if d.get("stages") is not None:
            report.stages = [StageReport.from_dict(s) for s in d["stages"]]
        elif d.get("selection_id"):      # a schedule's outcome as stored before
            report.stages = [StageReport(
                name=d.get("stage") or "", stage=d.get("stage") or "",
                selection_id=d["selection_id"], parent=d.get("parent"),
                n_pool=d.get("n_new_samples") or 0, n_selected=d.get("n_selected") or 0,
                reused=bool(d.get("reused_selection")),
                pairs_computed=d.get("pairs_computed") or 0,
                pairs_reused=d.get("pairs_reused") or 0,
                mask={} if d.get("mask") else None)]
        return report

    # -- the words ---------------------------------------------------------------------------

    def summary(self) -> str:
        """One line: "failed: why", or what the run made ("nothing new" when nothing)."""
        if self.status == "failed":
            return f"failed: {self.error or 'no reason recorded'}"
        if self.status != "done":
            return self.status or "-"
        parts = []
        if self.files_new:
            parts.append(_plural(len(self.files_new), "new file")
                         + (f" -> v{self.version}" if self.version else ""))
        elif self.version:
            parts.append(f"new version v{self.version}")
        if self.files_bad:
            names = ", ".join(Path(str(f.get("path", "?"))).name
                              + (f" ({f['reason']})" if f.get("reason") else "")
                              for f in self.files_bad)
            parts.append(f"{_plural(len(self.files_bad), 'bad file')} quarantined: {names}")
        if self.resumed:
            parts.append(f"resumed run {self.resumed}, which stopped after ingesting "
                         f"v{self.pool_version}")
        parts += [s.summary() for s in self.stages]
        if self.export:
            parts.append(f"export {self.export}")
        if self.note:
            parts.append(self.note)      # an idle run's note says "nothing new since ..."
        return "; ".join(parts) or "nothing new"

    def headline(self) -> str:
        """The run's one line in a worker's log: "nightly: run sched-1 done: ..."."""
        done = f"done: {self.summary()}" if self.status == "done" else self.summary()
        return f"{self.name}: run {self.run_id} {done}"

    def lines(self) -> list[str]:
        """Everything the run did, a line per fact and per stage (the CLI prints these)."""
        took = f" in {self.total_seconds:.1f} s" if "total" in self.seconds else ""
        out = [f"run {self.run_id}: {self.status}{took}"]
        if self.kind == "schedule" or self.files_new or self.files_seen:
            out.append(f"  files: {len(self.files_new)} new, {self.files_seen} already "
                       f"ingested, {len(self.files_bad)} quarantined, "
                       f"{len(self.files_waiting)} still being written")
        out += [f"  quarantined {bad['path']}: {bad['reason']}" for bad in self.files_bad]
        if self.version:
            out.append(f"  new version: v{self.version} "
                       f"({_plural(self.n_quarantined_rows, 'row')} quarantined)")
        if self.resumed:
            out.append(f"  resumed run {self.resumed}, which stopped after ingesting "
                       f"v{self.pool_version}")
        out += [f"  {s.line()}" for s in self.stages]
        if self.export:
            out.append(f"  export: {self.export}")
        if self.note:
            out.append(f"  {self.note}")
        if self.status == "failed":
            out.append(f"  failed: {self.error or 'no reason recorded'}")
        return out

    def stage_table(self, columns: list[str] | None = None,
                    extra: dict[str, dict[str, str]] | None = None) -> list[str]:
        """The stages as a table: each ``StageReport.row``, plus ``extra`` columns per stage
        name (the demo's noise counts), in the order of ``columns``."""
        rows = [{**s.row(), **(extra or {}).get(s.name, {})} for s in self.stages]
        return table_lines(rows, columns)
