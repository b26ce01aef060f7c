"""A faithful emulator of the OpenAperture Manager's REST API, for tests and the demo.

The real Manager is an Elixir service that cannot run here; this one answers as its
controllers do (read from OpenAperture/manager's source): its tables and column sizes,
its Ecto casts, its status codes and bodies, its OAuth2 bearer checks; and it can be told
to fail. ``server`` holds the Python API, ``http`` the sockets and routing, ``workflows``,
``registry`` and ``events`` the routes, ``store`` and ``columns`` the tables.
"""

from .server import ManagerEmulator

__all__ = ["ManagerEmulator"]
