//! The older Hugging Face folder layout (`vocab.txt` + `tokenizer_config.json` +
//! `pytorch_model.bin`, as RadBERT ships) gives the same token ids and the same
//! `last_hidden_state` as the `tokenizer.json` + `model.safetensors` folder of the same model. The
//! old-layout folder is made from the real all-MiniLM-L6-v2 checkpoint by transformers'
//! `BertForMaskedLM` and `torch.save` in the project's Python (tests/python/save_old_layout.py).

use std::path::{Path, PathBuf};
use std::process::Command;

use mg3d_report::tokens::load_tokenizer;
use mg3d_testkit::{minilm, python_with};
use mg3d_train::bert::BertModel;
use tch::{Device, Kind, Tensor};

/// Texts that exercise the normaliser and WordPiece: case, accents, CJK, punctuation, digits,
/// unknown words and long words.
const TEXTS: [&str; 5] = [
    "Bilateral pleural effusion, LARGER on the right; no pneumothorax.",
    "Café-au-lait naïve résumé: 12.5 mm nodule (RUL) — stable vs. 2021-03-04.",
    "肺结节 and 胸腔积液 noted; pneumonoultramicroscopicsilicovolcanoconiosis?",
    "s/p CABG, sternotomy wires intact; ETT 4 cm above the carina.",
    "",
];

fn old_layout(minilm: &Path, out: &Path) {
    let py = python_with(&["torch", "transformers"]).expect("torch and transformers in the venv");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/save_old_layout.py");
    let o = Command::new(py)
        .arg(&script)
        .arg(minilm)
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn vocab_txt_and_pytorch_model_bin_equal_the_new_layout() {
    let Some(new) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    old_layout(&new, &old);
    assert!(!old.join("tokenizer.json").exists() && !old.join("model.safetensors").exists());

    let (tk_new, tk_old) = (
        load_tokenizer(&new, 48).unwrap(),
        load_tokenizer(&old, 48).unwrap(),
    );
    let mut ids = Vec::new();
    for t in TEXTS {
        let a = tk_new.encode(t, true).unwrap();
        let b = tk_old.encode(t, true).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "{t:?}");
        assert_eq!(a.get_attention_mask(), b.get_attention_mask(), "{t:?}");
        ids.push(a.get_ids().iter().map(|&i| i as i64).collect::<Vec<_>>());
    }
    let ids = Tensor::from_slice2(&ids);
    let mask = ids.ne(0).to_kind(Kind::Int64);

    let (_vs_new, m_new) = BertModel::load(&new, Device::Cpu, false).unwrap();
    let (_vs_old, m_old) = BertModel::load(&old, Device::Cpu, false).unwrap();
    let a = m_new.forward(&ids, &mask).last_hidden_state;
    let b = m_old.forward(&ids, &mask).last_hidden_state;
    assert_eq!(a.size(), b.size());
    assert!(a.equal(&b), "last_hidden_state differs");
}

#[test]
fn a_file_that_is_not_a_torch_save_archive_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pytorch_model.bin");
    std::fs::write(&f, b"\x80\x02}q\x00.").unwrap();
    let e = mg3d_train::torch_pickle::read_state_dict(&f).unwrap_err();
    assert!(e.to_string().contains("not a zip archive"), "{e}");
}
