"""The lab fixtures of the integration tests, for the real-guest tests too."""

from tests.integration.conftest import fab, lab

__all__ = ["fab", "lab"]   # pytest finds fixtures by name in this module
