"""The server under test: RECALL_URL and RECALL_API_KEY, set by test.sh."""

import os

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def base_url() -> str:
    url = os.environ.get("RECALL_URL")
    if not url:
        pytest.fail("RECALL_URL is not set: run ./test.sh, which starts a server")
    return url


@pytest.fixture
def api_key() -> str:
    return os.environ["RECALL_API_KEY"]
