"""ProLLaMA-style protein language-model tuning, sampling, classification and mutation scoring."""
