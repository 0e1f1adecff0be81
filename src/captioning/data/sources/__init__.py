"""Dataset sources, one module each; registry.py maps a params name to its fetch function.

Kept empty so that importing one source (the shapes vocabulary, say) does not import them all.
"""
