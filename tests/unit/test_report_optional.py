"""`report` without matplotlib (the optional `report` extra): the tables, then one line, never a traceback."""

import subprocess
import sys

from fedmrn_mpi.results import ResultsWriter

from conftest import ROOT
from result_rows import round_row

# matplotlib made unimportable for this interpreter only
WITHOUT_MATPLOTLIB = ("import sys; sys.modules['matplotlib'] = None; "
                      "from fedmrn_mpi.__main__ import main; sys.exit(main(sys.argv[1:]))")


def _results(path):
    w = ResultsWriter(str(path), {"config_yaml": "run_name: r\nrounds: 1\n", "world_size": 2,
                                  "algorithm": "fedavg", "version": "0"}, 2, 2)
    w.append_round(round_row(1, 2, client_uplink=(5, 5), train_loss=1.2, downlink_bytes=20, wall_seconds=1.0,
                             control_bytes=0, phase=0.0, rank_bytes=True))
    w.close()
    return path


def _report(*args):
    return subprocess.run([sys.executable, "-c", WITHOUT_MATPLOTLIB, "report", *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_tables_print_and_the_missing_plots_are_one_line(tmp_path):
    f = _results(tmp_path / "r.h5")
    res = _report(f, "-o", tmp_path / "plots")
    assert "final acc" in res.stdout and "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "matplotlib" in lines[0] and "fedmrn_mpi[report]" in lines[0]
    assert res.returncode == 1 and not (tmp_path / "plots").exists()  # plots were asked for and not written


def test_without_plots_asked_for_nothing_is_missing(tmp_path):
    res = _report(_results(tmp_path / "r.h5"))
    assert res.returncode == 0 and res.stderr == "" and "final acc" in res.stdout
