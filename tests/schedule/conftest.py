from pathlib import Path

import pytest

from flownb.schedule import ScheduleStore

DATA = Path(__file__).parent / "data"


@pytest.fixture
def store(tmp_path) -> ScheduleStore:
    return ScheduleStore(tmp_path / "state")


@pytest.fixture
def params_nb() -> Path:
    return DATA / "params.ipynb"


@pytest.fixture
def slow_nb() -> Path:
    return DATA / "slow.ipynb"
