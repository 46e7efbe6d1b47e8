"""The thermodynamic simulations: Newton cooling, Langevin dynamics, the 2D Ising model and
Jarzynski work experiments."""

KIND_MODULES: tuple[str, ...] = ("cooling", "ising", "jarzynski", "langevin")
