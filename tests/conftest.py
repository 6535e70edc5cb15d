"""Shared fixtures. Kept small: data loading and the helpers path; tests build their own models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# make ``from helpers import state_hash`` work from every test folder
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def digits():
    """scikit-learn digits as torch batches (``modelopt_demo.data.load_digits_data()``)."""
    from modelopt_demo.data import load_digits_data

    return load_digits_data()
