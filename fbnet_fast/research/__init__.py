"""Research experiments built on the library: the pareto study, the cross-device experiment, lottery tickets."""
