"""Fixtures: real Kine (the pinned binary), real databases. Nothing here is mocked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

import kinelab as kl
from kinelab.provision.datastores import mariadb_binaries

# A suite started in the background by a shell without job control (`make test &`) inherits SIGINT ignored, and
# so would every lab owner and `kinelab up` the tests start: the Ctrl-C tests need Ctrl-C as a terminal sends it.
signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
KINELAB = [sys.executable, "-m", "kinelab.cli"]

os.environ.setdefault("KINELAB_PROGRESS", "0")


@pytest.fixture(scope="session", autouse=True)
def remove_root_postgres_data():
    """As root, a lab's Postgres data lives under /var/lib/kinelab/postgres, outside pytest's tmp dirs:
    remove what this session created once every lab is stopped."""
    from kinelab.provision.labdir import ROOT_PG_HOME

    before = set(ROOT_PG_HOME.iterdir()) if ROOT_PG_HOME.is_dir() else set()
    yield
    if ROOT_PG_HOME.is_dir():
        import shutil

        # another test session on this machine may be running a lab whose data appeared meanwhile: keep it
        in_use = " ".join(" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
        for leftover in set(ROOT_PG_HOME.iterdir()) - before:
            if str(leftover) not in in_use:
                shutil.rmtree(leftover, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_lab_left_behind(tmp_path):
    """A test that fails before its `kinelab down` would leave a `kinelab up` lab running (it has no owner to
    outlive): after every test, stop whatever the labs in its directory still run."""
    yield
    from kinelab.provision.labdir import LabDir

    for manifest in tmp_path.rglob("lab.json"):
        labdir = LabDir(manifest.parent)
        labdir.sweep(labdir.read_if_current())


@pytest.fixture(scope="session")
def kine():
    return kl.install_kine()


@pytest.fixture(scope="session")
def pg_lab(kine, tmp_path_factory):
    """Three Kine replicas on one embedded Postgres, shared by the tests that only add keys."""
    with kl.Lab(replicas=3, datastore="postgres", dir=tmp_path_factory.mktemp("pg-lab")) as lab:
        yield lab


@pytest.fixture(scope="session")
def docker_engine():
    """The Docker engine of the kind tests: the one that answers `docker info`, else kinelab's private dockerd,
    started here and stopped, with every container, network and mount it made, when the session ends. The
    docker and kind commands the tests run reach it through DOCKER_HOST."""
    from kinelab.provision.docker import PrivateEngine, ensure_engine, mounts_below

    why = PrivateEngine().why_not()
    try:
        engine, started = ensure_engine(log=print)
    except kl.KinelabError as exc:
        if why:  # a machine that can neither reach nor start an engine (not root, no docker CLI): nothing to test
            pytest.skip(str(exc))
        raise
    previous = os.environ.get("DOCKER_HOST")
    if engine.host:
        os.environ["DOCKER_HOST"] = engine.host
    yield engine
    if previous is None:
        os.environ.pop("DOCKER_HOST", None)
    else:
        os.environ["DOCKER_HOST"] = previous
    left = engine.docker("ps", "-a", "--format", "{{.Names}}", check=False).stdout.decode().split()
    assert not [name for name in left if name.startswith("kl-test-")], f"the kind tests left {left}"
    if started and not left:  # a concurrent session's clusters keep the engine they share
        private = PrivateEngine()
        removed = private.stop()
        print(f"stopped kinelab's private Docker engine: {removed}")
        assert private.process() is None and mounts_below([private.data_root, private.run_dir]) == []


@pytest.fixture(scope="session")
def node_image(docker_engine):
    """kinelab's offline kind node image (built the first time: minutes; then reused from the engine)."""
    from kinelab.provision.nodeimage import ensure_node_image

    started = time.monotonic()
    image = ensure_node_image(docker_engine, log=print)
    print(f"node image {image.reference} ready in {time.monotonic() - started:.0f}s: {image.timings_s}")
    return image


@pytest.fixture
def prefix():
    """A key prefix of this test's own, so tests sharing a lab never see each other's keys."""
    return f"/registry/configmaps/t-{uuid.uuid4().hex[:8]}/"


needs_mariadb = pytest.mark.skipif(mariadb_binaries() is None,
                                   reason="mariadb-server is not installed (.ci/run installs it)")


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def run_cli(*args, env=None, timeout=180):
    """Run the real CLI in a child process; returns CompletedProcess with text output."""
    full_env = {**os.environ, "KINELAB_PROGRESS": "0", **(env or {})}
    return subprocess.run([*KINELAB, *map(str, args)], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=REPO)


def assert_one_line_error(result, *fragments):
    """The CLI's bad-input contract: exit 2, one `kinelab: error:` line naming each fragment, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kinelab: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def lab_pids(model) -> list:
    """The pids a lab's manifest (a `LabModel`) records."""
    return [r.pid for r in model.records]


def read_model(lab_dir):
    """The manifest of the lab in `lab_dir`, as the typed model."""
    from kinelab.provision.labdir import LabDir

    return LabDir(lab_dir).read()


def all_gone(pids, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def select_only_role(lab, name: str, *, log_statements: bool = False):
    """A Postgres role on the lab's database that may only SELECT from kine; its Dsn."""
    from kinelab.db import connect_postgres

    admin, password = lab.datastore.admin_dsn, f"{name}-pw-0123456789"
    with connect_postgres(admin, database="kubernetes") as conn:
        conn.autocommit = True
        conn.execute(f"DROP ROLE IF EXISTS {name}")
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        conn.execute(f"GRANT SELECT ON kine TO {name}")
        if log_statements:
            conn.execute(f"ALTER ROLE {name} SET log_statement = 'all'")
    return kl.Dsn("postgres", admin.host, admin.port, name, password, "kubernetes")
