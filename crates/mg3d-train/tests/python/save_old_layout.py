"""Writes a Hugging Face BERT folder in the older layout from one in the new layout, as RadBERT
ships: pytorch_model.bin by torch.save (torch's zip format) of transformers' BertForMaskedLM
state_dict (an OrderedDict with nn.Module's `_metadata`, names under `bert.`, the masked-LM head
with its decoder weight tied to the word embeddings); vocab.txt, tokenizer_config.json and
config.json copied; no tokenizer.json, no model.safetensors.

Usage: save_old_layout.py NEW_FOLDER OUT_FOLDER
"""
import os
import shutil
import sys

import torch
from transformers import BertForMaskedLM

new, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
model = BertForMaskedLM.from_pretrained(new)
torch.save(model.state_dict(), os.path.join(out, "pytorch_model.bin"))
for f in ("config.json", "vocab.txt", "tokenizer_config.json"):
    shutil.copy(os.path.join(new, f), os.path.join(out, f))
