"""A faithful emulator of the OpenAperture Manager's REST API, for tests and the demo.

The real Manager is an Elixir service that cannot run here; this one keeps its storage
quirks (JSON-text columns, ``workflow_completed`` reset by a PUT that omits it), its
status codes and its OAuth2 bearer checks, and can be told to fail.
"""

from .server import ManagerEmulator

__all__ = ["ManagerEmulator"]
