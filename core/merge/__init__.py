"""Merging several LoRAs into one peft-format LoRA: LoRA-LEGO (``lego``) and the baselines ``linear``,
``cat``, ``ties`` and ``dare``, one file each; ``api.merge_adapters`` runs one by name and writes the
folder. Inputs and output are plain peft LoRA folders (``factors.py``).
"""
