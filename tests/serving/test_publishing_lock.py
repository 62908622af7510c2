"""One publisher at a time: while a run holds an export folder's publishing lock, `tfrec index --remove`
on that folder exits 4 at once and changes nothing; a holder killed with SIGKILL leaves no lock behind."""

import os
import signal
import subprocess
import sys

import pytest

from serving.publishing import LOCK_FILE, exclusive
from tests.conftest import ROOT
from tfrec.errors import ExitCode, ExportBusy

HOLD = """
import sys, time
from serving.publishing import exclusive
with exclusive(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A process holding the publishing lock of ``tmp_path / "export"`` until it is killed."""
    export = tmp_path / "export"
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(export)], cwd=ROOT, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    yield export, process
    process.kill()
    process.wait()


def test_a_second_publisher_exits_busy_and_changes_nothing(holder):
    export, process = holder
    before = sorted(os.listdir(export))
    run = subprocess.run([sys.executable, "-m", "tfrec.app.cli", "index", "--export", str(export), "--remove", "x"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == ExitCode.BUSY
    assert f"process {process.pid}" in run.stderr and "another run is publishing" in run.stderr
    assert sorted(os.listdir(export)) == before == [LOCK_FILE]


def test_a_killed_holder_leaves_the_lock_free(holder):
    export, process = holder
    with pytest.raises(ExportBusy), exclusive(export):
        pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    with exclusive(export):
        assert f"process {os.getpid()}" in (export / LOCK_FILE).read_text()
