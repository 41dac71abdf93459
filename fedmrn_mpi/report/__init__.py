"""The `report` and `status` commands on results files. Free of torch (and of matplotlib until plots are
written), so both start fast and run where torch is not installed."""

from .command import main_report
from .repro import repro_differences, repro_warning
from .scaling import ScalingGroup, scaling_groups
from .seeds import SeedGroup, SeedGrouping, seed_groups
from .status import main_status, status_lines
from .table import display_names, scaling_table, seed_table, summary_table

__all__ = ["ScalingGroup", "SeedGroup", "SeedGrouping", "display_names", "main_report", "main_status",
           "repro_differences", "repro_warning", "scaling_groups", "scaling_table", "seed_groups", "seed_table",
           "status_lines", "summary_table"]
