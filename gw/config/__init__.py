"""Configuration pipeline: Gateway API YAML → typed resources → validation → compiled route tables."""

from gw.config.compile import DEFAULT_CONTROLLER_NAME, LoadResult, compile_resources
from gw.config.describe import describe
from gw.config.errors import Condition, ConfigError
from gw.config.loader import (
    CompileSettings,
    Source,
    compile_options,
    compile_snapshot,
    compile_sources,
    load_config,
    load_text,
    load_with,
    read_documents,
    read_snapshot,
    read_sources,
)
from gw.config.parse import parse_documents
from gw.config.snapshot import Snapshot, sources_checksum
from gw.config.status import status_document
from gw.config.tls import build_ssl_context

__all__ = [
    "DEFAULT_CONTROLLER_NAME",
    "CompileSettings",
    "Condition",
    "ConfigError",
    "LoadResult",
    "Snapshot",
    "Source",
    "build_ssl_context",
    "compile_options",
    "compile_resources",
    "compile_snapshot",
    "compile_sources",
    "describe",
    "load_config",
    "load_text",
    "load_with",
    "parse_documents",
    "read_documents",
    "read_snapshot",
    "read_sources",
    "sources_checksum",
    "status_document",
]
