from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.slack_server import SlackServer


@pytest.fixture
def slack_server() -> Iterator[SlackServer]:
    with SlackServer() as server:
        yield server
