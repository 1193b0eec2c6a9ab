"""A code-point normalisation table as a SentencePiece precompiled charsmap, the form the ``tokenizers`` library's
``Precompiled`` normaliser reads (it is how XLM-R's own tokenizer.json carries its normaliser).

``tokenizers`` has no normaliser that takes a plain table, and a chain of ``Replace`` steps would both cost one pass
per entry and apply later entries to the output of earlier ones; the charsmap replaces each code point once.
"""

from __future__ import annotations

import struct

import numpy as np


def charsmap(norm: dict[int, str]) -> bytes:
    """`norm` as a SentencePiece precompiled charsmap, the form tokenizers' ``Precompiled`` normaliser reads:
    u32 trie bytes, a double-array trie over each code point's UTF-8 bytes, then the NUL-terminated replacements
    that the trie's values point into."""
    blob, offsets = bytearray(), {}
    for cp, out in sorted(norm.items()):
        offsets[chr(cp).encode()] = len(blob)
        blob += out.encode() + b"\0"
    trie = double_array(offsets)
    return struct.pack("<I", trie.nbytes) + trie.tobytes() + bytes(blob)


def double_array(values: dict[bytes, int]) -> np.ndarray:
    """A darts-clone double array (SentencePiece's trie) mapping each key to its value, as u32 units.

    A unit holds its label (the byte that leads to it) in bits 0-7, "a key ends here" in bit 8 and an offset in bits
    10-30; the child labelled c of the unit at p is at p ^ offset ^ c and the value at p ^ offset, bit 31 set. Each
    parent with children gets a fresh 256-unit block, so no two parents share p ^ offset and a lookup can never land
    on another parent's child; nodes with a value only take any free unit that is no block's start.
    """
    children: list[dict[int, int]] = [{}]
    value_of: dict[int, int] = {}
    for key, value in values.items():
        node = 0
        for byte in key:
            node = children[node].setdefault(byte, len(children))
            if node == len(children):
                children.append({})
        value_of[node] = value
    units, position, bases, size, free = {0: 0}, {0: 0}, set(), 0, 0
    for node, kids in enumerate(children):  # parents come before their children
        if kids:
            base, size = size, size + 256
        else:  # the lowest unit that is free and no block's start, in a new block if need be
            while free in units or free in bases:
                free += 1
            base, size = free, max(size, (free // 256 + 1) * 256)
        bases.add(base)
        p = position[node]
        units[p] |= (p ^ base) << 10 | (node in value_of) << 8
        if node in value_of:
            units[base] = value_of[node] | 1 << 31
        for label, kid in kids.items():
            position[kid], units[base ^ label] = base ^ label, label
    assert size < 1 << 21, "offsets must fit in 21 bits"
    array = np.zeros(size, "<u4")
    array[list(units)] = list(units.values())
    return array
