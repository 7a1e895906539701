"""gw: an API gateway for Kubernetes, configured with the Gateway API."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

__version__ = "0.1.0"

# The supervisor's code sits in the top-level supervisor/ folder (the project layout) and is
# imported as gw.supervisor, never as `supervisor`: that name belongs to supervisord's
# distribution, which may be installed next to gw. An install puts the folder at gw/supervisor
# (pyproject.toml's package-dir); a checkout (PYTHONPATH=repo, or `pip install -e`) has no
# gw/supervisor, so this finder gives the name the folder beside this package.
_HERE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT_SUPERVISOR = os.path.join(os.path.dirname(_HERE), "supervisor")


class _CheckoutSupervisor:
    """A meta path finder for the one name gw.supervisor, in a source checkout."""

    @staticmethod
    def find_spec(fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname != "gw.supervisor":
            return None
        from importlib.util import spec_from_file_location

        init = os.path.join(_CHECKOUT_SUPERVISOR, "__init__.py")
        return spec_from_file_location(fullname, init, submodule_search_locations=[_CHECKOUT_SUPERVISOR])


# First in line: the supervisor is always the one beside the gw imported (an editable install of
# another checkout maps the name too). The arbiter's file tells our folder from supervisord's.
if not os.path.isdir(os.path.join(_HERE, "supervisor")) and os.path.isfile(
    os.path.join(_CHECKOUT_SUPERVISOR, "arbiter.py")
):
    sys.meta_path.insert(0, _CheckoutSupervisor)
