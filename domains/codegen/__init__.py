"""Low-resource code generation in R and Racket (fine-tuning, prompting, PLANSEARCH, pass@k).

Not built yet: the package exists so the layout and packaging are fixed; its issue adds the
sandboxed execution, commands and evaluator.
"""
