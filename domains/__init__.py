"""adaptome.domains: protein, pathology, multilingual and codegen packages built on adaptome.core."""
