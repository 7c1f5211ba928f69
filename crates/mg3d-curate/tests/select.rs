//! Curate's policies and rules on hand-made views: each built-in policy, rule order and the first
//! excluding rule, unknown columns and non-boolean rules.

use mg3d_curate::select::{Policies, Reconstruction, check_rules, select};
use polars::prelude::*;

/// A view with the columns the policies read plus two for rules.
fn view() -> DataFrame {
    df!(
        "volume_id" => [Some("v1"), Some("v2"), Some("v3"), Some("v4"), Some("v5"), None, Some("v6")],
        "report_id" => [Some("r1"), Some("r2"), Some("r3"), Some("r4"), None, Some("r6"), Some("r7")],
        "study_id" => [Some("s1"), Some("s1"), Some("s2"), Some("s3"), Some("s4"), None, Some("s5")],
        "patient_id" => [Some("p1"), Some("p1"), Some("p2"), Some("p3"), Some("p4"), None, Some("p5")],
        "has_volume" => [true, true, true, true, true, false, true],
        "has_report" => [true, true, true, true, false, true, true],
        "report_chars" => [Some(200i32), Some(200), Some(30), Some(300), None, Some(100), Some(250)],
        "volume_hash" => [Some("h1"), Some("h2"), Some("h3"), Some("h1"), Some("h5"), None, Some("h6")],
        "report_hash" => [Some("t1"), Some("t1"), Some("t3"), Some("t4"), None, Some("t6"), Some("t1")],
        "slice_spacing_mm" => [Some(2.0f64), Some(1.0), Some(1.0), Some(0.8), Some(1.0), None, None],
        "label_lung_nodule" => [Some(1i32), Some(1), Some(0), None, None, None, Some(1)],
    )
    .unwrap()
}

fn rules_of(sel: &mg3d_curate::select::Selection) -> Vec<(usize, String)> {
    sel.excluded
        .iter()
        .map(|e| (e.row, e.rule.clone()))
        .collect()
}

#[test]
fn pairing_policies_exclude_orphans() {
    let sel = select(
        &view(),
        &[],
        &Policies {
            dedupe_volumes: false,
            dedupe_reports: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        rules_of(&sel),
        vec![
            (4, "require_report".to_string()),
            (5, "require_volume".to_string())
        ]
    );
    assert_eq!(sel.selected, vec![0, 1, 2, 3, 6]);
    let keep_all = Policies {
        require_report: false,
        require_volume: false,
        dedupe_volumes: false,
        dedupe_reports: false,
        ..Default::default()
    };
    assert_eq!(select(&view(), &[], &keep_all).unwrap().selected.len(), 7);
}

#[test]
fn min_report_chars_and_duplicates() {
    let pol = Policies {
        min_report_chars: 50,
        ..Default::default()
    };
    let sel = select(&view(), &[], &pol).unwrap();
    let ex = rules_of(&sel);
    assert!(ex.contains(&(2, "min_report_chars".into())), "{ex:?}");
    // v4 has v1's voxels: v1 (lower id) is kept.
    let dup = sel.excluded.iter().find(|e| e.row == 3).unwrap();
    assert_eq!(dup.rule, "dedupe_volumes");
    assert!(dup.detail.contains("v1"), "{}", dup.detail);
    // r7 (study s5) has r1's text (study s1): r1 is kept. r2 has it too, but in r1's study
    // (a second reconstruction's copy of the report), so it stays.
    let dup = sel.excluded.iter().find(|e| e.row == 6).unwrap();
    assert_eq!(dup.rule, "dedupe_reports");
    assert!(dup.detail.contains("r1"));
    assert_eq!(sel.selected, vec![0, 1]);
    let names: Vec<&str> = sel.counts.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "candidates",
            "require_volume",
            "require_report",
            "min_report_chars",
            "dedupe_volumes",
            "dedupe_reports"
        ]
    );
    let remaining: Vec<usize> = sel.counts.iter().map(|c| c.1).collect();
    assert_eq!(remaining, [7, 6, 5, 4, 3, 2]);
}

#[test]
fn one_reconstruction_per_study() {
    let base = Policies {
        dedupe_volumes: false,
        dedupe_reports: false,
        ..Default::default()
    };
    let thin = select(
        &view(),
        &[],
        &Policies {
            reconstruction: Reconstruction::Thinnest,
            ..base.clone()
        },
    )
    .unwrap();
    // s1 has v1 (2.0 mm) and v2 (1.0 mm): the thinner v2 stays.
    assert_eq!(
        rules_of(&thin)
            .iter()
            .filter(|(_, r)| r.starts_with("reconstruction"))
            .count(),
        1
    );
    assert!(
        thin.excluded
            .iter()
            .any(|e| e.row == 0 && e.rule == "reconstruction: thinnest")
    );
    let first = select(
        &view(),
        &[],
        &Policies {
            reconstruction: Reconstruction::First,
            ..base
        },
    )
    .unwrap();
    assert!(
        first
            .excluded
            .iter()
            .any(|e| e.row == 1 && e.rule == "reconstruction: first")
    );
}

#[test]
fn rules_apply_in_order_and_the_first_failing_one_is_recorded() {
    let rules = vec![
        "slice_spacing_mm <= 1.5".to_string(),
        "label_lung_nodule = 1".to_string(),
    ];
    let pol = Policies {
        require_report: false,
        require_volume: false,
        dedupe_volumes: false,
        dedupe_reports: false,
        ..Default::default()
    };
    let sel = select(&view(), &rules, &pol).unwrap();
    let ex = rules_of(&sel);
    // v1 (2.0 mm, nodule) fails rule 1; v3 (1.0 mm, no nodule) fails rule 2; v4 fails rule 2
    // (null label); row 5 has no spacing (null) so rule 1; v6 null spacing -> rule 1 though it has a nodule.
    assert_eq!(
        ex,
        vec![
            (0, "rule: slice_spacing_mm <= 1.5".to_string()),
            (2, "rule: label_lung_nodule = 1".to_string()),
            (3, "rule: label_lung_nodule = 1".to_string()),
            (4, "rule: label_lung_nodule = 1".to_string()),
            (5, "rule: slice_spacing_mm <= 1.5".to_string()),
            (6, "rule: slice_spacing_mm <= 1.5".to_string()),
        ]
    );
    assert_eq!(sel.selected, vec![1]);
    assert!(sel.excluded[4].detail.contains("null"));
    // Swapping the rules changes which rule is first for rows failing both.
    let swapped: Vec<String> = rules.iter().rev().cloned().collect();
    let sel2 = select(&view(), &swapped, &pol).unwrap();
    assert_eq!(sel2.excluded[0].rule, "rule: slice_spacing_mm <= 1.5");
    assert_eq!(sel2.excluded[1].rule, "rule: label_lung_nodule = 1");
    assert_eq!(sel2.selected, vec![1]);
}

#[test]
fn unknown_columns_and_non_boolean_rules_are_errors() {
    let valid: Vec<String> = vec!["slice_spacing_mm".into(), "findings_chars".into()];
    let e = check_rules(&["slice_thicknes <= 1".to_string()], &valid)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown column \"slice_thicknes\""), "{e}");
    assert!(
        e.contains("valid columns: slice_spacing_mm, findings_chars"),
        "{e}"
    );
    assert!(
        check_rules(
            &["slice_spacing_mm <= 1.5 AND findings_chars > 0".to_string()],
            &valid
        )
        .is_ok()
    );
    let e = select(
        &view(),
        &["slice_spacing_mm + 1".to_string()],
        &Policies::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("must be a boolean"), "{e}");
    let e = select(&view(), &["nope = 1".to_string()], &Policies::default()).unwrap_err();
    assert!(e.to_string().contains("unknown column \"nope\""), "{e}");
}
