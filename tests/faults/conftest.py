"""The fault suite runs the real CLI, dispatcher and runners in private data dirs."""

from tests.integration.conftest import cli  # noqa: F401 - the fixture, used by name
