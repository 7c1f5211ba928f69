//! Training a WordPiece vocabulary on report clauses is deterministic and usable.

use mg3d_report::tokens::{load_tokenizer, tokenize_clauses, train_wordpiece};

#[test]
fn trained_wordpiece_is_deterministic_and_round_trips() {
    let texts: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "a {} mm nodule in the right upper lobe, no pleural effusion; emphysema {}.",
                i % 17,
                if i % 3 == 0 { "present" } else { "absent" }
            )
        })
        .collect();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let t1 = train_wordpiece(&texts, 400, a.path()).unwrap();
    let t2 = train_wordpiece(&texts, 400, b.path()).unwrap();
    t1.save(a.path().join("tokenizer.json"), true).unwrap();
    t2.save(b.path().join("tokenizer.json"), true).unwrap();
    assert_eq!(
        std::fs::read(a.path().join("tokenizer.json")).unwrap(),
        std::fs::read(b.path().join("tokenizer.json")).unwrap(),
        "same corpus, same bytes"
    );
    let n = t1.get_vocab_size(true);
    assert!(
        n > 200 && n <= 400,
        "{n}: at most the requested size (the corpus may offer fewer pieces)"
    );
    let vocab = t1.get_vocab(true);
    assert!(vocab.contains_key("nodule") && vocab.contains_key("[CLS]"));
    let tk = load_tokenizer(&a.path().join("tokenizer.json"), 64).unwrap();
    let t = tokenize_clauses(
        &tk,
        &["A 7 mm nodule,".to_string(), "zzz unseenword.".to_string()],
    )
    .unwrap();
    assert_eq!(t.ids[0], 2, "[CLS]");
    assert_eq!(t.ids[t.length - 1], 3, "[SEP]");
    assert!(
        !t.ids[..t.length].contains(&1),
        "no [UNK]: every printable character is in the vocabulary"
    );
    let decoded = tk
        .decode(
            &t.ids[..t.length]
                .iter()
                .map(|&x| x as u32)
                .collect::<Vec<_>>(),
            true,
        )
        .unwrap();
    assert_eq!(decoded, "a 7 mm nodule, zzz unseenword.");
}

#[test]
fn tokens_stage_trains_when_no_tokenizer_is_given_and_is_byte_identical() {
    use std::sync::Arc;
    let mut reg = mg3d_core::StageRegistry::new();
    reg.register(Arc::new(mg3d_synth::SynthStage))
        .register(Arc::new(mg3d_report::reports::ReportsStage))
        .register(Arc::new(mg3d_report::tokens::TokensStage));
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for d in &dirs {
        let text = format!(
            "[pipeline]\nname='t'\nwork_dir='{}'\nsalt='test-salt-0123456789'\nseed=4\n[stages.synth]\nkind='synth'\nparams={{patients=12, body_width_mm=[50.0, 55.0], z_extent_mm=[20.0, 22.0], in_plane_spacing_mm=[1.0, 1.0], slice_spacing_mm=[5.0, 5.0]}}\n\
             [stages.reports]\nkind='reports'\ninputs=['synth']\nparams={{files=['@synth/reports/train_reports.csv']}}\n[stages.tokens]\nkind='tokens'\ninputs=['reports']\nparams={{train_vocab_size=800, max_length=128}}\n",
            d.path().display()
        );
        let (_p, _) = mg3d_testkit::run_pipeline(&reg, &text);
    }
    for f in [
        "tokens/tokens.parquet",
        "tokens/tokenizer.json",
        "tokens/vocab.txt",
    ] {
        assert_eq!(
            std::fs::read(dirs[0].path().join(f)).unwrap(),
            std::fs::read(dirs[1].path().join(f)).unwrap(),
            "{f}"
        );
    }
}
