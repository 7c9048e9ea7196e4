"""A measured-latency budget (NetAdapt's lookup table), for when MACs are the wrong proxy.

``latency_table(structure, ...)`` times the dense model and builds a ``LatencyTable`` (cached on
disk by everything the times depend on); a ``PruningProblem`` with ``metric="latency"`` budgets
against its predictions, and ``fit_measured`` re-scales a chosen allocation until the device's own
clock agrees. The parts: ``timing`` (the clock), ``latency_table`` (the table and its prediction),
``latency_measure`` (measuring and caching it), ``latency_fit`` (the closed loop).
"""
from autoprune.deploy.latency_fit import fit_measured
from autoprune.deploy.latency_measure import latency_table, measure_table, table_key
from autoprune.deploy.latency_table import METHODS, QUANTUM, LatencyTable
from autoprune.deploy.timing import measure_latency, paired_ratio

__all__ = ["LatencyTable", "METHODS", "QUANTUM", "fit_measured", "latency_table", "measure_latency", "measure_table",
           "paired_ratio", "table_key"]
