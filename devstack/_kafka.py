"""Runs the stack's single-node KRaft Kafka broker from Maven Central jars."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from bookaudit.errors import TerminalError
from devstack._postgres import process_alive, tail, terminate

HOST = "127.0.0.1"
MAIN_CLASS = "kafka.Kafka"
# 4.1 ships StorageTool in the Scala core jar (kafka.tools); the second name covers a release
# that has moved it to the tools module.
_STORAGE_TOOL_CLASSES = ("kafka.tools.StorageTool", "org.apache.kafka.tools.StorageTool")
_READY_TIMEOUT_S = 60.0
_WARM_UP_TOPIC = "__bookaudit_stack_ready"
_STOP_GRACE_S = 20.0
_HEAP = "-Xmx512m"


def _resource(name: str) -> str:
    return resources.files("devstack").joinpath(name).read_text()


def kafka_version() -> str:
    """The Kafka version pinned in the packaged pom.xml."""
    found = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", _resource("pom.xml"))
    if found is None:
        raise TerminalError("devstack/pom.xml has no <kafka.version> property")
    return found.group(1)


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bookaudit"


def java() -> str:
    """Path of the java launcher, or a clear error naming the package to install."""
    found = shutil.which("java")
    if found is None:
        raise TerminalError("java not found on PATH: install openjdk-17-jdk-headless")
    return found


def ensure_jars(progress: Callable[[str], None]) -> Path:
    """The libs dir holding Kafka's runtime jars, fetched with Maven on first use only."""
    cache = _cache_root() / f"kafka-{kafka_version()}"
    cache.mkdir(parents=True, exist_ok=True)
    # Two stacks starting at once (say, parallel test sessions) must not fill libs together.
    fd = os.open(cache / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _fetch_jars(cache, progress)
    finally:
        os.close(fd)


def _fetch_jars(cache: Path, progress: Callable[[str], None]) -> Path:
    pom = _resource("pom.xml")
    digest = hashlib.sha256(pom.encode()).hexdigest()
    libs, marker = cache / "libs", cache / "pom.sha256"
    # The marker is written last, so a fetch interrupted halfway is redone rather than trusted;
    # comparing the pom digest also refetches when the log4j pin changes under the same version.
    if libs.is_dir() and marker.is_file() and marker.read_text().strip() == digest:
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise TerminalError(f"mvn not found on PATH (needed once to fill {libs}): install maven")
    progress(f"kafka: fetching Kafka {kafka_version()} jars from Maven Central into {libs}")
    (cache / "pom.xml").write_text(pom)
    partial = cache / "libs.partial"
    if partial.exists():
        shutil.rmtree(partial)
    done = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(cache / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ],
        cwd=cache,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        output = " | ".join(line for line in done.stdout.splitlines() if "ERROR" in line)
        raise TerminalError(
            f"mvn dependency:copy-dependencies failed (exit {done.returncode}) for "
            f"{cache / 'pom.xml'}: {output[-1500:] or done.stderr.strip()[-1500:]}"
        )
    if libs.exists():
        shutil.rmtree(libs)
    partial.rename(libs)
    marker.write_text(digest + "\n")
    return libs


def write_config(kafka_dir: Path, port: int, controller_port: int) -> Path:
    """Write server.properties and the log4j2 config for a combined broker+controller node."""
    kafka_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(kafka_dir / "data"),
        "num.partitions": "3",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
    }
    config = kafka_dir / "server.properties"
    config.write_text(
        "# Written by devstack: single-node KRaft, throw-away data.\n"
        + "".join(f"{key}={value}\n" for key, value in settings.items())
    )
    (kafka_dir / "log4j2.properties").write_text(_resource("log4j2.properties"))
    return config


def _jvm_argv(libs: Path, kafka_dir: Path, main_class: str) -> list[str]:
    return [
        java(),
        _HEAP,
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={kafka_dir / 'log4j2.properties'}",
        # java expands the classpath wildcard itself, so no shell is involved.
        "-cp",
        f"{libs}/*",
        main_class,
    ]


def _cluster_id() -> str:
    # Kafka's Uuid text form: url-safe base64 of 16 random bytes without padding. Kafka never
    # hands out ids starting with '-' because they read as a command-line flag.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def format_storage(libs: Path, kafka_dir: Path, config: Path) -> str:
    """Format the KRaft log dir with a fresh cluster id; return the StorageTool class used."""
    cluster_id = _cluster_id()
    failures: list[str] = []
    for main_class in _STORAGE_TOOL_CLASSES:
        done = subprocess.run(
            [
                *_jvm_argv(libs, kafka_dir, main_class),
                "format",
                "-t",
                cluster_id,
                "-c",
                str(config),
            ],
            cwd=kafka_dir,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return main_class
        output = " | ".join(
            line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()
        )
        failures.append(f"{main_class}: {output[-800:]}")
        if "Could not find or load main class" not in output:
            break
    raise TerminalError("kafka storage format failed: " + "; ".join(failures))


def start(libs: Path, kafka_dir: Path, config: Path) -> int:
    """Spawn the broker detached from our session, logging to kafka_dir/kafka.log; its pid."""
    log = kafka_dir / "kafka.log"
    argv = [*_jvm_argv(libs, kafka_dir, MAIN_CLASS), str(config)]
    # posix_spawn rather than Popen: the broker must outlive us, and an abandoned Popen object
    # warns (ResourceWarning) when collected while its child still runs.
    pid = os.posix_spawn(
        argv[0],
        argv,
        dict(os.environ),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    (kafka_dir / "kafka.pid").write_text(f"{pid}\n")
    return pid


def recorded_pid(kafka_dir: Path) -> int | None:
    """The broker pid written at spawn time, if any."""
    try:
        text = (kafka_dir / "kafka.pid").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _marker(kafka_dir: Path) -> str:
    # The config path is on the broker's command line and unique to this stack, so a recycled
    # pid or another stack's broker is never mistaken for ours.
    return str(kafka_dir / "server.properties")


def alive(pid: int, kafka_dir: Path) -> bool:
    """True if pid is the running broker of the stack in kafka_dir."""
    return process_alive(pid, _marker(kafka_dir))


def probe(bootstrap: str, timeout_s: float = 2.0) -> str | None:
    """None if the broker serves metadata with at least one broker, else why not."""
    # log_level 0 keeps librdkafka from printing connection-refused noise while we poll.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        return str(exc)
    return None if metadata.brokers else "metadata lists no broker"


def delete_topics(bootstrap: str, prefix: str, timeout_s: float = 120.0) -> list[str]:
    """Delete every topic named `<prefix>.<...>` and wait until the broker has; returns them.
    A broker shared by every test and benchmark run otherwise keeps them all: 85,000
    partitions took the 512 MB development broker down with an OutOfMemoryError."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    mine = sorted(t for t in admin.list_topics(timeout=60).topics if t.startswith(prefix + "."))
    if not mine:
        return []
    for future in admin.delete_topics(mine, operation_timeout=60).values():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            # Already gone (deleted meanwhile) is the outcome wanted; anything else is not.
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
    return mine


def _warm_up(bootstrap: str, timeout_s: float) -> str | None:
    """One idempotent, acks=all produce: a fresh broker first loads its producer-id and
    transaction coordinators, and until then every idempotent producer logs retry warnings."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "log_level": 0,
            "message.timeout.ms": int(timeout_s * 1000),
        }
    )
    failures: list[str] = []
    producer.produce(
        _WARM_UP_TOPIC,
        value=b"ready",
        on_delivery=lambda err, _msg: failures.append(str(err)) if err else None,
    )
    remaining = producer.flush(timeout_s)
    if remaining or failures:
        return failures[0] if failures else "warm-up message not acknowledged"
    return None


def wait_ready(
    pid: int, bootstrap: str, kafka_dir: Path, timeout_s: float = _READY_TIMEOUT_S
) -> None:
    """Block until the broker answers list_topics; fail fast if it dies, with the log's tail."""
    log = kafka_dir / "kafka.log"
    deadline = time.monotonic() + timeout_s
    while True:
        if not alive(pid, kafka_dir):
            raise TerminalError(f"kafka (pid {pid}) exited during startup; log: {tail(log)}")
        error = probe(bootstrap)
        if error is None:
            error = _warm_up(bootstrap, timeout_s=max(1.0, deadline - time.monotonic()))
            if error is None:
                return
        if time.monotonic() > deadline:
            raise TerminalError(
                f"kafka on {bootstrap} not ready after {timeout_s:.0f}s ({error}); log: {tail(log)}"
            )
        time.sleep(0.5)


def stop(pid: int | None, kafka_dir: Path) -> None:
    """SIGTERM the broker (a controlled shutdown), SIGKILL it after the grace period."""
    for candidate in {p for p in (pid, recorded_pid(kafka_dir)) if p is not None}:
        terminate(candidate, _marker(kafka_dir), _STOP_GRACE_S, (signal.SIGTERM,))


def kill(pid: int, kafka_dir: Path) -> None:
    """kill -9 the broker, as a crash would stop it (fault tests); it recovers its log at start."""
    terminate(pid, _marker(kafka_dir), 10.0, ())
