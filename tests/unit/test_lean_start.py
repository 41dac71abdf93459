"""Client ranks import only what they use: no h5py (rank 0 writes the results), no compiler stack (dynamo,
inductor, sympy, Triton on the CPU), no plotting or SciPy."""

import subprocess
import sys

from conftest import ROOT

CLIENT_RANK = f"""
import sys
from fedmrn_mpi.__main__ import main  # the CLI module every rank runs
from fedmrn_mpi.config import load_config
from fedmrn_mpi.run import run  # the round loop and everything it imports
from fedmrn_mpi.run.setup import build_setup
from fedmrn_mpi.training import train_client

class ClientRank:  # what build_setup() reads of the transport, for a client rank of a 3-rank job
    rank, size, local_rank, local_size, is_server, runs_clients, client_ranks = 1, 3, 1, 3, False, True, [1, 2]

cfg = load_config(r"{ROOT / 'configs' / 'tiny.yaml'}", [])
su = build_setup(cfg, ClientRank())
x, y = su.client_data(0)
train_client(su.model, su.algo, su.state, x, y, su.local.context(1, 0, int(su.sizes[0]), su.device), su.local)
heavy = ("h5py", "matplotlib", "scipy", "triton", "torch._dynamo", "torch._inductor", "sympy")
print(" ".join(m for m in heavy if m in sys.modules))
"""


def test_a_client_rank_loads_no_results_file_code_and_no_compiler_stack():
    res = subprocess.run([sys.executable, "-c", CLIENT_RANK], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [], f"a client rank imported {res.stdout.strip()}"
