"""Special token ids shared by every tokenizer (data/text.py) and every model reading tokens.

Ids 0..3 are <pad>, <unk>, <bos>, <eos>, in this order, for char, word and BPE tokens alike.
"""

from __future__ import annotations

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIALS))
