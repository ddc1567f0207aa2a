"""Language and task adapters for multilingual masked LMs (topic classification, NER, sentiment).

Not built yet: the package exists so the layout and packaging are fixed; its issue adds the
readers, commands and evaluator.
"""
