"""gw: an API gateway for Kubernetes, configured with the Gateway API."""

__version__ = "0.1.0"
