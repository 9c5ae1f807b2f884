"""Benchmarks: named suites, the runner and the reports."""

from oodlab.bench.report import markdown_report, suite_table, write_report, write_results
from oodlab.bench.runner import DEFAULT_DETECTORS, BenchConfig, resolve_detectors, run_bench, run_suite
from oodlab.bench.suites import (
    DEFAULT_SUITES,
    SUITES,
    Suite,
    SuiteData,
    build_suite,
    get_suite,
    list_suites,
)

__all__ = [
    "DEFAULT_DETECTORS",
    "DEFAULT_SUITES",
    "SUITES",
    "BenchConfig",
    "Suite",
    "SuiteData",
    "build_suite",
    "get_suite",
    "list_suites",
    "markdown_report",
    "resolve_detectors",
    "run_bench",
    "run_suite",
    "suite_table",
    "write_report",
    "write_results",
]
