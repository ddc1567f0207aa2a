"""Optimizer-side behaviour of adapter methods (DESIGN decision 4): proximal gate steps, norm-adaptive
rates, progressive freezing, rank sampling. Modules here import nothing heavy at package import."""
