"""Shared fixtures. Kept small: data loading and the helpers path; tests build their own models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# make ``from helpers import state_hash`` work from every test folder
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg_fixture import postgres_server, postgres_url  # noqa: F401 (a real PostgreSQL)


def pytest_configure(config):
    """Under pytest-xdist each worker is one process per core: one torch thread each, so the
    workers do not oversubscribe the cores (two workers x two threads on two cores made
    training tests ~10x slower). Registers the ``zoo`` marker and, with
    ``MODELOPT_ZOO_RESULTS`` set, the model zoo's results recorder (``zoo_results``)."""
    import os

    import zoo_results

    zoo_results.configure(config)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


# the model zoo's results (tests/zoo_results.py; rendered by tools/zoo_doc.py)
def pytest_collection_modifyitems(config, items):
    import zoo_results

    zoo_results.collection_modifyitems(config, items)


def pytest_runtest_logreport(report):
    import zoo_results

    zoo_results.runtest_logreport(report)


def pytest_collectreport(report):
    import zoo_results

    zoo_results.collectreport(report)


def pytest_sessionfinish(session, exitstatus):
    import zoo_results

    zoo_results.sessionfinish(session, exitstatus)


def pytest_unconfigure(config):
    import zoo_results

    zoo_results.unconfigure(config)


@pytest.fixture(scope="session")
def digits():
    """The digits data as torch batches (``modelopt_demo.data.load_digits_data()``)."""
    from modelopt_demo.data import load_digits_data

    return load_digits_data()


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """A SmallCNN(width=16) trained briefly (4 epochs) on digits, in eval mode. Shared: tests
    must not change it (the components under test never do; tests hash it to prove that)."""
    import torch

    import modelopt_core as mo
    from modelopt_core.training import TrainConfig, fit
    from modelopt_demo.models import SmallCNN

    torch.manual_seed(0)
    m = SmallCNN(width=16)
    fit(m, digits.train, config=TrainConfig(epochs=4, lr=3e-3),
        ctx=mo.Context(show_progress=False))
    return m.eval()
