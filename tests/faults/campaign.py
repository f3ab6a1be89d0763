"""`make faults`: crash and cut the pipeline at random moments under a workload, then reconcile.

Two sources feed one warehouse through one Kafka: `fa` in logical mode (capture) and `fb` in
trigger mode (relay). The faults: kill -9 of the capture, the relay, the audit writer and the
alerts job (restarted at once, as a service manager would), a Kafka crash and restart, a
PostgreSQL crash and restart (sources and warehouse alike), and the warehouse unreachable for a
while (a TCP proxy in front of it is cut). After each fault a probe change must reach the
warehouse and raise its one alert: that time is the fault's recovery. At the end every change
the sources committed (their own `fc_truth` table) is looked up in the warehouse, and the hash
chain is verified. It runs on a stack of its own, never the shared one: it restarts services.

    python -m tests.faults.campaign --long             # >= 50 faults, >= 100k changes
    python -m tests.faults.campaign --seed 1234        # replay a run (the same schedule)
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import devstack
from bookaudit.demo.day import AUDITED_TABLES, create_sample_schema
from bookaudit.errors import TerminalError
from bookaudit.source.audit_start import install
from bookaudit.source.install import TableName
from bookaudit.warehouse.schema import init_warehouse
from devstack import StackEnv
from tests.faults.plan import KINDS, Fault, Identity, Reconciliation, plan_faults, reconcile
from tests.faults.proxy import CuttableProxy
from tests.faults.workload import SETUP, TRUTH_TABLES, Workload, grants, probe

APP_ROLE = "fc_app"
PREFIX = "fc"
SOURCES = {"fa": "logical", "fb": "trigger"}  # source name -> capture mode
WAREHOUSE_DB = "fc_wh"
PROBE_RULE = "price-by-unauthorised-role"
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CampaignSettings:
    state_dir: Path
    seed: int
    faults: int
    changes: int  # keep the workload going until at least this many changes committed
    rate: float  # workload changes per second, both sources together
    recovery_timeout_s: float = 240.0
    drain_timeout_s: float = 900.0
    keep_stack: bool = False


SHORT = {"faults": 8, "changes": 3_000, "rate": 60.0}
LONG = {"faults": 60, "changes": 100_000, "rate": 120.0}


@dataclass
class Supervised:
    """One bookaudit process, restarted whenever it exits, as systemd's Restart=always would."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    planned: bool = False
    unplanned: list[str] = field(default_factory=list)
    starts: int = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bookaudit", *self.argv],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=out,
                cwd=ROOT,
            )
        self.starts += 1

    def kill9(self) -> None:
        assert self.proc is not None
        self.planned = True
        self.proc.send_signal(signal.SIGKILL)

    def check(self) -> None:
        if self.proc is None or self.proc.poll() is None:
            return
        if not self.planned:
            self.unplanned.append(f"exit {self.proc.returncode}: {_last_line(self.log)}")
        self.planned = False
        self.start()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.planned = True
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


class Supervisor:
    """Restarts every process that exits; the campaign kills them through it."""

    def __init__(self, processes: dict[str, Supervised]) -> None:
        self.processes = processes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> None:
        for process in self.processes.values():
            process.start()
        self._thread.start()

    def kill9(self, name: str) -> None:
        with self._lock:
            self.processes[name].kill9()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for process in self.processes.values():
            process.stop()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                for process in self.processes.values():
                    process.check()


@dataclass(frozen=True)
class Recovery:
    fault: Fault
    seconds: float


@dataclass(frozen=True)
class CampaignResult:
    seed: int
    recoveries: tuple[Recovery, ...]
    changes: Reconciliation
    alerts: Reconciliation
    chain_ok: bool
    chain_line: str
    unplanned: tuple[str, ...]
    workload_reconnects: int
    elapsed_s: float

    @property
    def passed(self) -> bool:
        return self.changes.exact and self.alerts.exact and self.chain_ok

    def report(self) -> list[str]:
        per_kind = Counter(r.fault.kind for r in self.recoveries)
        longest_by_kind: dict[str, float] = {}
        for r in self.recoveries:
            longest_by_kind[r.fault.kind] = max(longest_by_kind.get(r.fault.kind, 0.0), r.seconds)
        worst = max(self.recoveries, key=lambda r: r.seconds, default=None)
        lines = [
            f"fault campaign, seed {self.seed} (replay: python -m tests.faults.campaign "
            f"--seed {self.seed} ...), {self.elapsed_s:.0f} s",
            f"faults injected: {len(self.recoveries)}",
            *(
                f"  {kind:<18} {per_kind[kind]:>4}   longest recovery "
                f"{longest_by_kind.get(kind, 0.0):6.1f} s"
                for kind in KINDS
            ),
            f"changes committed: {self.changes.changes:,} "
            f"(sources {', '.join(f'{s} {m}' for s, m in SOURCES.items())})",
            f"lost: {self.changes.lost}   doubled: {self.changes.doubled}   "
            f"phantom: {self.changes.phantom}",
            f"alerts: {self.alerts.changes} expected, lost {self.alerts.lost}, "
            f"doubled {self.alerts.doubled}, unexpected {self.alerts.phantom}",
            f"chain: {self.chain_line}",
            (
                f"longest recovery: {worst.seconds:.1f} s ({worst.fault.kind}, fault "
                f"{worst.fault.number})"
                if worst
                else "longest recovery: -"
            ),
            f"unplanned process exits: {len(self.unplanned)}",
            *(f"  {u}" for u in self.unplanned[:10]),
            f"workload reconnects: {self.workload_reconnects}",
            *(f"  {e}" for e in self.changes.examples + self.alerts.examples),
            f"result: {'PASS' if self.passed else 'FAIL'}",
        ]
        return lines


class Campaign:
    def __init__(self, settings: CampaignSettings, say: Callable[[str], None]) -> None:
        self.settings = settings
        self.say = say
        self.started = time.monotonic()
        self.env: StackEnv | None = None
        self.proxy: CuttableProxy | None = None
        self.supervisor: Supervisor | None = None
        self.probes: list[str] = []

    # --- set-up -----------------------------------------------------------------------------

    def stack_up(self) -> StackEnv:
        try:
            return devstack.up(self.settings.state_dir, progress=self.say)
        except TerminalError as exc:
            # A broker that dies at its first start on a busy machine gets one more chance.
            self.say(f"stack: first start failed ({exc}); trying again")
            return devstack.up(self.settings.state_dir, progress=self.say)

    def dsn(self, db: str, user: str | None = None) -> str:
        assert self.env is not None
        extra = {"user": user} if user else {}
        return make_conninfo(self.env.admin_dsn, dbname=db, **extra)

    def prepare(self) -> None:
        self.env = self.stack_up()
        devstack.reset_databases(self.env.admin_dsn, (*SOURCES, WAREHOUSE_DB))
        with psycopg.connect(self.env.admin_dsn, autocommit=True) as admin:
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone():
                admin.execute(f'DROP OWNED BY "{APP_ROLE}"')
            else:
                admin.execute(f'CREATE ROLE "{APP_ROLE}" LOGIN')
        for source, mode in SOURCES.items():
            dsn = self.dsn(source)
            create_sample_schema(dsn)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(SETUP.encode())
            tables = [TableName("public", t) for t in AUDITED_TABLES]
            # As `source install` does it: hooks, then (logical mode) the slot.
            install(
                dsn,
                tables,
                publication="bookaudit",
                slot=f"fc_{source}",
                mode=mode,
                grant_to=[APP_ROLE],
            )
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(grants(APP_ROLE).encode())
        init_warehouse(self.dsn(WAREHOUSE_DB))
        self.proxy = CuttableProxy(
            str(conninfo_to_dict(self.env.admin_dsn)["host"]),
            int(str(conninfo_to_dict(self.env.admin_dsn)["port"])),
        )
        self.proxy.start()

    def processes(self) -> dict[str, Supervised]:
        assert self.env is not None and self.proxy is not None
        logs = self.settings.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        wh_via_proxy = make_conninfo(
            self.dsn(WAREHOUSE_DB), host="127.0.0.1", port=str(self.proxy.port)
        )
        base = {
            **os.environ,
            "BOOKAUDIT_KAFKA_BOOTSTRAP": self.env.kafka_bootstrap,
            "BOOKAUDIT_TOPIC_PREFIX": PREFIX,
            "BOOKAUDIT_WAREHOUSE_DSN": wh_via_proxy,
            "BOOKAUDIT_GROUP_ID": "fc-audit",
            "BOOKAUDIT_ALERTS_GROUP_ID": "fc-alerts",
        }

        def source_env(source: str) -> dict[str, str]:
            return {
                **base,
                "BOOKAUDIT_SOURCE_DSN": self.dsn(source),
                "BOOKAUDIT_SOURCE_NAME": source,
                "BOOKAUDIT_MODE": SOURCES[source],
                "BOOKAUDIT_SLOT": f"fc_{source}",
            }

        return {
            "capture": Supervised("capture", ["capture"], source_env("fa"), logs / "capture.log"),
            "relay": Supervised("relay", ["capture"], source_env("fb"), logs / "relay.log"),
            "writer": Supervised("writer", ["consume", "audit"], base, logs / "writer.log"),
            "alerts": Supervised(
                "alerts", ["consume", "alerts", "--no-stdout"], base, logs / "alerts.log"
            ),
        }

    def wait(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except psycopg.OperationalError:
                pass  # the warehouse is being restarted or cut: ask again
            if time.monotonic() > deadline:
                raise TimeoutError(f"stuck: {what} after {timeout:.0f} s")
            time.sleep(0.2)

    def query(self, db: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(db), connect_timeout=5) as conn:
            return conn.execute(sql.encode(), params).fetchall()

    def slot_ready(self) -> bool:
        return bool(
            self.query("fa", "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'fc_fa'")
        )

    # --- faults -----------------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        assert self.supervisor is not None and self.proxy is not None
        if fault.kind.startswith("kill-"):
            self.supervisor.kill9(fault.kind.removeprefix("kill-"))
        elif fault.kind == "restart-kafka":
            devstack.restart(
                self.settings.state_dir,
                "kafka",
                down_s=fault.down_s,
                ready_timeout_s=self.settings.recovery_timeout_s,
                progress=_mute,
            )
        elif fault.kind == "restart-postgres":
            devstack.restart(
                self.settings.state_dir, "postgres", down_s=fault.down_s, progress=_mute
            )
        elif fault.kind == "warehouse-outage":
            self.proxy.cut()
            time.sleep(fault.down_s)
            self.proxy.restore()
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")

    def send_probes(self, number: int) -> list[str]:
        actors = []
        for source in SOURCES:
            actor = f"probe-{number}-{source}"
            deadline = time.monotonic() + self.settings.recovery_timeout_s
            while True:
                try:
                    probe(self.dsn(source, APP_ROLE), actor)
                    break
                except psycopg.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)  # the source is still starting
            actors.append(actor)
        self.probes.extend(actors)
        return actors

    def probes_arrived(self, actors: list[str]) -> bool:
        changes = self.query(
            WAREHOUSE_DB,
            "SELECT count(DISTINCT actor) FROM audit.row_changes WHERE actor = ANY(%s)",
            (actors,),
        )
        alerts = self.query(
            WAREHOUSE_DB,
            "SELECT count(DISTINCT actor) FROM audit.alerts WHERE actor = ANY(%s)",
            (actors,),
        )
        return int(changes[0][0]) == len(actors) == int(alerts[0][0])

    def run_fault(self, fault: Fault) -> Recovery:
        started = time.monotonic()
        self.inject(fault)
        actors = self.send_probes(fault.number)
        self.wait(
            f"fault {fault.number} ({fault.kind}): probes {actors} in the warehouse",
            lambda: self.probes_arrived(actors),
            self.settings.recovery_timeout_s,
        )
        return Recovery(fault, time.monotonic() - started)

    # --- the end ----------------------------------------------------------------------------

    def truth(self) -> list[Identity]:
        return [
            (source, str(t), str(op), int(rev))
            for source in SOURCES
            for t, op, rev in self.query(source, "SELECT tbl, op::text, rev FROM fc_truth")
        ]

    def recorded(self) -> list[Identity]:
        rows = self.query(
            WAREHOUSE_DB,
            "SELECT source, table_name, action, coalesce(after ->> 'rev', before ->> 'rev') "
            "FROM audit.row_changes WHERE table_name = ANY(%s)",
            (list(TRUTH_TABLES),),
        )
        ops = {"insert": "c", "update": "u", "delete": "d"}
        return [(str(s), str(t), ops.get(str(a), str(a)), int(r)) for s, t, a, r in rows]

    def drained(self, expected: int) -> bool:
        got = self.query(
            WAREHOUSE_DB,
            "SELECT count(*) FROM audit.row_changes WHERE table_name = ANY(%s)",
            (list(TRUTH_TABLES),),
        )
        return int(got[0][0]) >= expected

    def alerts(self) -> Reconciliation:
        rows = self.query(WAREHOUSE_DB, "SELECT actor, rule FROM audit.alerts")
        expected = [("alerts", actor, PROBE_RULE, 0) for actor in self.probes]
        return reconcile(expected, [("alerts", str(a), str(r), 0) for a, r in rows])

    def verify_chain(self) -> tuple[bool, str]:
        result = subprocess.run(
            [sys.executable, "-m", "bookaudit", "warehouse", "verify"],
            env={**os.environ, "BOOKAUDIT_WAREHOUSE_DSN": self.dsn(WAREHOUSE_DB)},
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )
        text = (result.stdout + result.stderr).strip().splitlines()
        return result.returncode == 0, (text[-1] if text else f"exit {result.returncode}")

    def run(self) -> CampaignResult:
        s = self.settings
        plan = plan_faults(s.seed, s.faults)
        self.say(
            f"fault campaign: seed {s.seed}, {s.faults} faults, >= {s.changes:,} changes at "
            f"{s.rate:.0f}/s, stack in {s.state_dir}"
        )
        self.prepare()
        self.supervisor = Supervisor(self.processes())
        workload = Workload({src: self.dsn(src, APP_ROLE) for src in SOURCES}, s.rate, s.seed)
        recoveries: list[Recovery] = []
        # Everything after the first process starts is undone on any way out, or an aborted
        # campaign would leave bookaudit processes retrying against a stack that is gone.
        self.supervisor.start()
        try:
            self.wait("the capture's slot", self.slot_ready, 120)
            workload.start()
            for fault in plan:
                time.sleep(fault.pause_s)
                recovery = self.run_fault(fault)
                recoveries.append(recovery)
                self.say(
                    f"fault {fault.number}/{len(plan)} {fault.kind}: recovered in "
                    f"{recovery.seconds:.1f} s"
                )
            while (committed := self.committed()) < s.changes:
                self.say(f"workload: {committed:,} of {s.changes:,} changes committed")
                time.sleep(10)
            workload.join()
            expected = len(self.truth())
            self.say(f"draining: {expected:,} changes committed, waiting for the warehouse")
            self.wait(
                "the warehouse to catch up", lambda: self.drained(expected), s.drain_timeout_s
            )
            time.sleep(2)  # let any late duplicate land before counting
        finally:
            workload.join()
            self.supervisor.stop()
        changes = reconcile(self.truth(), self.recorded())
        chain_ok, chain_line = self.verify_chain()
        unplanned = tuple(
            f"{name}: {u}" for name, p in self.supervisor.processes.items() for u in p.unplanned
        )
        return CampaignResult(
            seed=s.seed,
            recoveries=tuple(recoveries),
            changes=changes,
            alerts=self.alerts(),
            chain_ok=chain_ok,
            chain_line=chain_line,
            unplanned=unplanned,
            workload_reconnects=workload.reconnects,
            elapsed_s=time.monotonic() - self.started,
        )

    def committed(self) -> int:
        return sum(
            int(self.query(source, "SELECT count(*) FROM fc_truth")[0][0]) for source in SOURCES
        )

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        if not self.settings.keep_stack:
            devstack.down(self.settings.state_dir)


def _mute(_line: str) -> None:
    """Restart progress is reported per fault instead."""


def run_campaign(settings: CampaignSettings, say: Callable[[str], None]) -> CampaignResult:
    campaign = Campaign(settings, say)
    try:
        result = campaign.run()
    except BaseException as exc:
        say(
            f"fault campaign aborted ({type(exc).__name__}: {str(exc)[:300]}); seed {settings.seed}"
        )
        raise
    finally:
        campaign.close()
    for line in result.report():
        say(line)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.campaign", description=__doc__)
    parser.add_argument("--long", action="store_true", help=f"the long form: {LONG}")
    parser.add_argument("--seed", type=int, help="replay the schedule of an earlier run")
    parser.add_argument("--faults", type=int)
    parser.add_argument("--changes", type=int)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--dir", type=Path, default=ROOT / ".stack-faults", help="stack state dir")
    parser.add_argument("--keep-stack", action="store_true", help="leave the stack running")
    args = parser.parse_args(argv)
    shape = dict(LONG if args.long else SHORT)
    for name in ("faults", "changes", "rate"):
        if getattr(args, name) is not None:
            shape[name] = getattr(args, name)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    settings = CampaignSettings(
        state_dir=args.dir.resolve(),
        seed=seed,
        faults=int(shape["faults"]),
        changes=int(shape["changes"]),
        rate=float(shape["rate"]),
        keep_stack=args.keep_stack,
    )
    result = run_campaign(settings, lambda line: print(line, file=sys.stderr, flush=True))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
