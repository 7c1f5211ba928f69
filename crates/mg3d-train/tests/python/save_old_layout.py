"""Writes a Hugging Face BERT folder in the older layout from one in the new layout, shaped like
RadBERT's: pytorch_model.bin by torch.save (torch's zip format) of a BertForMaskedLM-style state
dict (an OrderedDict with nn.Module's `_metadata`, names under `bert.`, and a masked-LM decoder
weight tied to the word embeddings, so two entries share one storage); vocab.txt,
tokenizer_config.json and config.json copied; no tokenizer.json, no model.safetensors.

Usage: save_old_layout.py NEW_FOLDER OUT_FOLDER
"""
import os
import shutil
import sys
from collections import OrderedDict

import torch
from safetensors.torch import load_file

new, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
state = OrderedDict(("bert." + k, v) for k, v in load_file(os.path.join(new, "model.safetensors")).items())
state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
state._metadata = OrderedDict([("", {"version": 1})])
torch.save(state, os.path.join(out, "pytorch_model.bin"))
for f in ("config.json", "vocab.txt", "tokenizer_config.json"):
    shutil.copy(os.path.join(new, f), os.path.join(out, f))
