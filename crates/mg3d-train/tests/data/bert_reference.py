"""Reference outputs of transformers' BertModel for tests/bert_reference.rs.

Usage: python bert_reference.py MODEL_FOLDER OUT.safetensors

Tokenizes a few fixed texts with the folder's tokenizer.json (padded to the longest), runs
BertModel (eval, float32, CPU) with the default attention implementation and with "eager",
and writes input_ids, attention_mask, embeddings (hidden_states[0]), last_hidden_state and
last_hidden_state_eager to OUT.safetensors.
"""

import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import BertModel

TEXTS = [
    "a 7 mm nodule is seen in the right upper lobe.",
    "no pleural or pericardial effusion.",
    "approx. 3.5 x 2 cm consolidation in the rll; emphysema (centrilobular), "
    "mild cardiomegaly, degenerative changes of the thoracic spine and a small "
    "hiatal hernia. the trachea and main bronchi are patent. no pneumothorax.",
    "größe 3,5 cm — läsion unverändert, µ-befund.",
    "normal.",
]


def main() -> None:
    folder, out = sys.argv[1], sys.argv[2]
    tok = Tokenizer.from_file(f"{folder}/tokenizer.json")
    tok.enable_truncation(256)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(TEXTS)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    torch.manual_seed(0)
    result = {"input_ids": ids, "attention_mask": mask}
    for impl, key in [(None, "last_hidden_state"), ("eager", "last_hidden_state_eager")]:
        kwargs = {"attn_implementation": impl} if impl else {}
        model = BertModel.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
        with torch.no_grad():
            o = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        result[key] = o.last_hidden_state.contiguous()
        if impl is None:
            result["embeddings"] = o.hidden_states[0].contiguous()
            result["pooler_output"] = o.pooler_output.contiguous()
    save_file(result, out)
    print(f"wrote {out}: ids {tuple(ids.shape)}, real tokens per text {mask.sum(1).tolist()}")


if __name__ == "__main__":
    main()
