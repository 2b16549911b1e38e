"""The ``scanrelay`` command line (SPEC §2)."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from daemon import logs
from daemon.config import Config, ConfigError, load_config
from daemon.errors import FatalError, RequestError, ScanrelayError
from daemon.instances.registry import Instances
from daemon.intake.claim import NO_PROFILE, Claimed, new_claim_id, profile_of
from daemon.layout import Layout
from daemon.outcomes import RunStatus
from daemon.readers import read_request_file
from daemon.request import build_select, parse_request
from daemon.runner import Runner
from daemon.store.sqlite_requests import read_ledger
from daemon.store.stores import open_stores

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="scanrelay: copy, download and compare shelf scans from request files.")


class _Console:
    """A ``rich`` console made on first use: ``scanrelay run`` (the daemon) prints
    nothing with it, and importing ``rich`` is ~10 % of the daemon's start."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


console = _Console(soft_wrap=True)  # no wrapping: output is also read by scripts
err = _Console(stderr=True, soft_wrap=True)
ConfigOpt = Annotated[str | None, typer.Option("-c", "--config", help="config file "
                      "(default: $SCANRELAY_CONFIG or ./config.yml)")]
SELECT_OPTIONS = {"store_id": "--store", "captured_from": "--from", "captured_to": "--to",
                  "status": "--status", "limit": "--limit"}
EXIT = {RunStatus.DONE: 0, RunStatus.PARTIAL: 1, RunStatus.FAILED: 1, RunStatus.INVALID: 2,
        RunStatus.INTERRUPTED: 1}


def _config(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[red]config {exc.source} is invalid:[/red]")
        for problem in exc.problems:
            err.print(f"  - {problem}", markup=False)
        raise typer.Exit(2) from None


def _setup_logs(config: Config, level: str | None = None) -> None:
    logs.setup(level or config.log.level, config.log.json_lines)


@app.command()
def run(config: ConfigOpt = None) -> None:
    """Run the daemon in the foreground (systemd runs this)."""
    cfg = _config(config)
    _setup_logs(cfg)
    try:
        if cfg.cluster is not None:  # one host of a cluster (docs/cluster.md)
            from daemon.cluster.service import ClusterService

            code = ClusterService(cfg).run()
        else:
            from daemon.service import Service

            code = Service(cfg).run()
    except FatalError as exc:
        err.print(f"scanrelay: {exc}", markup=False)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def once(file: Path, config: ConfigOpt = None) -> None:
    """Process one request file in the foreground, with progress bars.

    Exit 0 done, 1 failed or partial, 2 invalid. The file is claimed (moved) like a drop."""
    from daemon.progress import ProgressBars

    cfg = _config(config)
    _setup_logs(cfg, "WARNING")
    layout = Layout.of(cfg).ensure(sorted(cfg.profiles))
    claimed = _claim_for_once(file, layout)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stores, instances = open_stores(cfg, layout), Instances(cfg)
    with ProgressBars(console.get()) as bars:
        status = Runner(cfg, layout, stores, instances, stop, bars.update).process(claimed)
    instances.close()
    record = stores.requests.get(claimed.claim_id)
    stores.close()
    console.print(f"{claimed.name}: [bold]{status.value}[/bold]"
                  + (f" → {record.final_path}" if record and record.final_path else ""))
    raise typer.Exit(EXIT[status])


def _claim_for_once(file: Path, layout: Layout) -> Claimed:
    if not file.is_file():
        err.print(f"{file}: not a file")
        raise typer.Exit(2)
    resolved = file.resolve()
    inbox = layout.inbox.resolve()
    profile = profile_of(resolved, inbox) if resolved.is_relative_to(inbox) else None
    claim_id = new_claim_id()
    dest = layout.processing / f"{claim_id}+{profile or NO_PROFILE}+{file.name}"
    shutil.move(str(file), dest)
    return Claimed(dest, claim_id, profile, file.name)


@app.command()
def validate(files: Annotated[list[Path] | None, typer.Argument()] = None,
             config: ConfigOpt = None) -> None:
    """Check the config and request files; exit 1 listing every problem."""
    cfg = _config(config)
    console.print(f"config: ok ({len(cfg.instances)} instances, {len(cfg.profiles)} profiles)")
    bad = 0
    inbox = Layout.of(cfg).inbox.resolve()
    for file in files or []:
        resolved = file.resolve()
        profile = profile_of(resolved, inbox) if resolved.is_relative_to(inbox) else None
        try:
            request = parse_request(file, cfg, folder_profile=profile)
        except Exception as exc:  # every file gets its verdict, whatever went wrong
            bad += 1
            problems = exc.problems if isinstance(exc, RequestError) else [
                f"file: could not be read ({type(exc).__name__}: {exc})"]
            err.print(f"{file}: invalid")
            for problem in problems:
                err.print(f"  - {problem}", markup=False)
            continue
        count = len(request.scan_ids) or len(request.pairs) or "selected"
        console.print(f"{file}: ok ({request.action}, {count} scans)")
    raise typer.Exit(1 if bad else 0)


@app.command()
def demo(config: ConfigOpt = None,
         run_sample: Annotated[bool, typer.Option("--run/--no-run", help="start the daemon, "
                               "drop a sample request and show it being processed")] = False,
         keep: Annotated[bool, typer.Option(help="with --run: keep the daemon (and the "
                         "sandbox) running")] = False,
         scans: int = 12,
         with_sandbox: Annotated[bool, typer.Option("--sandbox/--no-sandbox", help="with "
                                 "--run: also start the sandbox and run a copy with analysis "
                                 "from sandbox-prod to sandbox-qa")] = True,
         dsn: Annotated[str | None, typer.Option(help="the sandbox's PostgreSQL (admin DSN; "
                        "default: an embedded one)")] = None) -> None:
    """Create the embedded demo instances (folder kind) with sample scans."""
    from daemon.demo import create_demo

    cfg = _config(config)
    roots = create_demo(_demo_folder(cfg), scans=scans)
    for root in roots:
        console.print(f"demo instance ready: {root}")
    if run_sample:
        _setup_logs(cfg)
        from daemon.demo_run import run_demo
        from daemon.sandbox.app import SandboxError, SandboxOptions

        box = SandboxOptions(data_dir=cfg.root / "sandbox", dsn=dsn) if with_sandbox else None
        try:
            code = run_demo(cfg, keep=keep, console=console.get(), sandbox=box)
        except SandboxError as exc:
            err.print(f"scanrelay demo: the sandbox cannot start: {exc}", markup=False)
            raise typer.Exit(1) from None
        raise typer.Exit(code)


def _demo_folder(cfg: Config) -> Path:
    source = cfg.instances.get("demo-source")
    if source is not None and source.kind == "folder":
        return cfg.instance_path(source.path).parent
    return cfg.root / "data"


@app.command()
def submit(action: str,
           source: Annotated[str | None, typer.Option()] = None,
           target: Annotated[str | None, typer.Option()] = None,
           store: Annotated[int | None, typer.Option(help="target store ID (copy)")] = None,
           ids: Annotated[str | None, typer.Option(help="scan IDs, e.g. 1,2,3")] = None,
           ids_file: Annotated[Path | None, typer.Option(help="a CSV/XLSX/JSON of IDs")] = None,
           mode: Annotated[str | None, typer.Option(help="auto or mapped (copy)")] = None,
           analyze: Annotated[bool | None, typer.Option("--analyze/--no-analyze")] = None,
           profile: Annotated[str | None, typer.Option()] = None,
           label: Annotated[str | None, typer.Option()] = None,
           batch_size: Annotated[int | None, typer.Option()] = None,
           dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
           force: Annotated[bool, typer.Option("--force")] = False,
           config: ConfigOpt = None) -> None:
    """Write a valid request file atomically into the inbox and print its path."""
    from daemon.submit import drop_request

    cfg = _config(config)
    raw: dict[str, Any] = {"action": action, "profile": profile, "source": source,
                           "target": target, "target_store_id": store, "mode": mode,
                           "analyze": analyze, "label": label, "batch_size": batch_size}
    raw = {k: v for k, v in raw.items() if v is not None}
    raw.update({k: True for k, v in (("dry_run", dry_run), ("force", force)) if v})
    try:
        raw.update(_ids(ids, ids_file, cfg))
        path = drop_request(cfg, raw, stem=action)
    except RequestError as exc:
        err.print("request is invalid:")
        for problem in exc.problems:
            err.print(f"  - {problem}", markup=False)
        raise typer.Exit(2) from None
    print(path)  # plain: scripts read it, rich would wrap a long path


def _ids(ids: str | None, ids_file: Path | None, cfg: Config) -> dict[str, Any]:
    if ids_file is not None:
        raw = read_request_file(ids_file, cfg.limits.max_request_bytes)
        return {k: v for k, v in raw.items() if k in ("scan_ids", "target_scan_ids", "pairs")}
    if not ids:
        return {}
    parts = [p.strip() for p in ids.replace(";", ",").split(",") if p.strip()]
    bad = [p for p in parts if not p.isdigit()]
    if bad:
        raise RequestError([f"--ids: {bad[0]!r} is not a scan ID; use e.g. --ids 1,2,3"])
    return {"scan_ids": [int(p) for p in parts]}


@app.command()
def new(config: ConfigOpt = None) -> None:
    """Interactive wizard: answer a few questions, get a request file in the inbox."""
    from daemon.wizard import Wizard

    try:
        path = Wizard(_config(config), console.get()).run()
    except (RequestError, EOFError, KeyboardInterrupt):
        err.print("no request written")
        raise typer.Exit(2) from None
    print(path)


@app.command("select")
def select_(source: str,
            store: Annotated[int | None, typer.Option("--store", help="store ID")] = None,
            from_: Annotated[str | None, typer.Option(
                "--from", help="captured from: YYYY-MM-DD, today, yesterday, -7d")] = None,
            to: Annotated[str | None, typer.Option("--to", help="captured to (inclusive)")]
            = None,
            status_: Annotated[str | None, typer.Option("--status", help="e.g. done")] = None,
            limit: Annotated[int | None, typer.Option("--limit")] = None,
            shown: Annotated[int, typer.Option("--show", help="scans listed")] = 10,
            as_json: Annotated[bool, typer.Option("--json")] = False,
            config: ConfigOpt = None) -> None:
    """How many scans of SOURCE a selection matches, and the first ones; runs nothing.

    Exit 2 for a bad selection or instance, 1 when the instance cannot be read."""
    from daemon.selection import preview, show

    cfg = _config(config)
    raw = {"store_id": store, "captured_from": from_, "captured_to": to, "status": status_,
           "limit": limit}
    try:
        selection = build_select({k: v for k, v in raw.items() if v is not None})
    except RequestError as exc:
        for problem in exc.problems:
            for field, option in SELECT_OPTIONS.items():
                problem = problem.replace(f"select.{field}", option)
            err.print(problem, markup=False)
        raise typer.Exit(2) from None
    if source not in cfg.instances:
        err.print(f"unknown instance {source!r}; configured: {', '.join(sorted(cfg.instances))}",
                  markup=False)
        raise typer.Exit(2)
    instances = Instances(cfg)
    try:
        result = preview(instances.get(source), selection, shown)
    except ScanrelayError as exc:
        err.print(f"{source}: {exc}", markup=False)
        raise typer.Exit(1) from None
    finally:
        instances.close()
    if as_json:
        print(json.dumps(result.as_json(), indent=2, default=str))
    else:
        show(result, console.get())


@app.command()
def retry(run_id: str, config: ConfigOpt = None) -> None:
    """Drop a new request covering only what failed in RUN_ID; print its path."""
    from daemon.runinfo import retry_request

    try:
        path = retry_request(_config(config), run_id)
    except LookupError as exc:
        err.print(str(exc.args[0]), markup=False)
        raise typer.Exit(1) from None
    except RequestError as exc:
        err.print("; ".join(exc.problems), markup=False)
        raise typer.Exit(2) from None
    except ScanrelayError as exc:  # cluster mode: its database cannot be read
        err.print(f"scanrelay: {exc}", markup=False)
        raise typer.Exit(1) from None
    print(path)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False,
           config: ConfigOpt = None) -> None:
    """Daemon state: up/down, inbox depth, in-flight runs with progress, last results."""
    from daemon.status import collect

    data = collect(_config(config))
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    daemon = data["daemon"]
    console.print(f"daemon: {'[green]up[/green]' if daemon['up'] else '[red]down[/red]'}"
                  + (f" (pid {daemon['pid']})" if daemon.get("pid") else ""))
    inbox = data["inbox"]
    age = f", oldest {inbox['oldest_age_seconds']} s" if inbox["oldest_age_seconds"] else ""
    others = f", {inbox['not_requests']} not requests" if inbox.get("not_requests") else ""
    console.print(f"inbox: {inbox['waiting']} waiting{age}{others}")
    if "cluster" in data:
        from daemon.cluster.overview import status_lines

        for line in status_lines(data["cluster"]):
            console.print(line, markup=False)
    for instance in daemon.get("instances", []):
        if not instance["available"]:
            console.print(f"  down: {instance['reason']}", markup=False)
    for run in data["in_flight"]:
        progress = run.get("progress") or {}
        done = f" {progress.get('done')}/{progress.get('total')}" if progress else ""
        why = f" ({run['waiting']})" if run.get("waiting") else ""
        console.print(f"  {run['status']:<8} {run['run_id'] or '-'} {run['request']}{done}"
                      f"{why}{_where(run)}", markup=False)
    for result in data["last_results"]:
        console.print(f"  last: {result['status']:<8} {result['run_id'] or '-'} "
                      f"{result['request']}", markup=False)
    for job in data.get("schedules", [])[:3]:
        console.print(f"  next: {job['next_fire']} {job['job']}"
                      + (" (overdue)" if job["overdue"] else ""), markup=False)
    for dropped in data.get("markers_dropped", []):
        console.print(f"target {dropped['target']}: drops the marker field {dropped['field']} "
                      "of a create; exactly once rests on the upload IDs there", markup=False)


def _where(run: dict[str, Any]) -> str:
    """Cluster mode: which host runs an in-flight request (nothing on one host)."""
    if "host" not in run:
        return ""
    from daemon.cluster.overview import in_flight_suffix

    return in_flight_suffix(run)


@app.command()
def schedules(as_json: Annotated[bool, typer.Option("--json")] = False,
              config: ConfigOpt = None) -> None:
    """Configured schedules and the rerun window: next fire, last fire and its outcome."""
    from daemon.cluster.views import viewing
    from daemon.schedule.report import schedule_rows

    cfg = _config(config)
    with viewing(cfg) as view:
        rows = schedule_rows(cfg, view=view)
    if as_json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    from rich.table import Table

    table = Table("job", "cron", "next fire", "last fire", "request", "outcome")
    for r in rows:
        table.add_row(r.job, f"{r.cron} ({r.timezone})",
                      (r.next_fire or "never") + (" (overdue)" if r.overdue else ""),
                      r.last_fire or "-", r.last_request or "-", r.outcome or "-")
    console.print(table if rows else "no schedules or reruns configured")


@app.command()
def runs(failed: Annotated[bool, typer.Option("--failed")] = False,
         as_json: Annotated[bool, typer.Option("--json")] = False,
         limit: int = 50, config: ConfigOpt = None) -> None:
    """Run history, newest first."""
    from daemon.cluster.views import viewing

    cfg = _config(config)
    with viewing(cfg) as view:
        ledger = read_ledger(Layout.of(cfg).state) if view is None else view.history()
        try:
            records = ledger.recent(limit, failed_only=failed) if ledger else []
        except ScanrelayError as exc:  # cluster mode: its database cannot be read
            err.print(f"scanrelay: {exc}", markup=False)
            raise typer.Exit(1) from None
    if as_json:
        print(json.dumps([r.__dict__ for r in records], indent=2, default=str))
        return
    from rich.table import Table

    table = Table("run", "request", "action", "status", "scans", "failed", "finished")
    for r in records:
        table.add_row(r.run_id or r.claim_id, r.name, r.action or "-", r.status,
                      str(r.counts.get("items", "")), str(r.counts.get("failed", "")),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.finished_at))
                      if r.finished_at else "")
    console.print(table)


@app.command()
def show(run_id: str, as_json: Annotated[bool, typer.Option("--json")] = False,
         config: ConfigOpt = None) -> None:
    """One run's summary: status, counts, errors, where its files are."""
    from daemon.cluster.views import viewing
    from daemon.runinfo import load_run

    cfg = _config(config)
    with viewing(cfg) as cluster:
        try:
            view = load_run(Layout.of(cfg), run_id, cluster.history() if cluster else None)
            extras = cluster.run_extras(run_id) if cluster and view else None
        except ScanrelayError as exc:  # cluster mode: its database cannot be read
            err.print(f"scanrelay: {exc}", markup=False)
            raise typer.Exit(1) from None
    if view is None:
        err.print(f"no run {run_id}")
        raise typer.Exit(1)
    data = view.data if extras is None else {**view.data, "cluster": extras}
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    for key in ("run_id", "request", "action", "label", "status", "attempts", "started_at",
                "finished_at"):
        if data.get(key) is not None:
            console.print(f"{key:>12}: {data[key]}", markup=False)
    for key, value in (data.get("counts") or {}).items():
        console.print(f"{key:>12}: {value}", markup=False)
    analysis = data.get("analysis")  # analyze runs, and copy runs with analyze: true
    if isinstance(analysis, dict):
        console.print(f"{'analysis':>12}: {analysis.get('status')}", markup=False)
        for comment, count in (analysis.get("counts") or {}).items():
            console.print(f"{count:>12}  {comment}", markup=False)
        if analysis.get("scan_counts"):  # rows are sections; each pair once, its worst
            console.print(f"{'scans':>12}: by the worst comment of their rows", markup=False)
            for comment, count in analysis["scan_counts"].items():
                console.print(f"{count:>12}  {comment}", markup=False)
    for error in (data.get("errors") or [])[:20]:
        console.print(f"       error: {error}", markup=False)
    if view.files:
        console.print(f"{'files':>12}: {', '.join(view.files)}", markup=False)
    if extras is not None:
        from daemon.cluster.overview import run_lines

        for line in run_lines(extras):
            console.print(line, markup=False)


@app.command()
def sandbox(
    dsn: Annotated[str | None, typer.Option(help="admin DSN of a PostgreSQL server that may "
                   "create databases (default: an embedded one under the data folder)")] = None,
    config_out: Annotated[Path | None, typer.Option("--config", help="also write the "
                          "instances block to this file")] = None,
    ephemeral: Annotated[bool, typer.Option(help="keep nothing: data in a temporary folder, "
                         "removed (with the databases) at stop")] = False,
    seed: Annotated[int, typer.Option(help="seed of the scans and recognition outcomes")] = 7,
    scans: Annotated[int, typer.Option(help="scans seeded into sandbox-prod")] = 24,
    data: Annotated[Path, typer.Option(help="data folder, reused by a restart")] = Path("sandbox"),
    port: Annotated[int, typer.Option(help="sandbox-prod's API port (sandbox-qa: the next); "
                    "default: the previous run's, else free ones")] = 0,
    processing_delay: Annotated[float, typer.Option(help="seconds until a created scan is "
                                "processed")] = 3.0,
    db_prefix: Annotated[str, typer.Option(help="database names: PREFIX_prod, PREFIX_qa")]
        = "scanrelay_sandbox",
) -> None:
    """A local stand-in platform with two instances (sandbox-prod, sandbox-qa) to try
    workflows on. Prints the instances block for config.yml; runs until SIGTERM/Ctrl-C."""
    from daemon.sandbox.app import SandboxError, SandboxOptions
    from daemon.sandbox.serve import serve

    options = SandboxOptions(data_dir=data, dsn=dsn, ephemeral=ephemeral, seed=seed,
                             scans=scans, port=port, processing_delay=processing_delay,
                             db_prefix=db_prefix)
    try:
        code = serve(options, config_out, lambda text: console.print(text, markup=False,
                                                                      highlight=False))
    except SandboxError as exc:
        err.print(f"scanrelay sandbox: {exc}", markup=False)
        raise typer.Exit(1) from None
    raise typer.Exit(code)
