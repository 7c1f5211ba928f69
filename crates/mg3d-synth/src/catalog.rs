//! The CT-RATE abnormality labels and the anatomical regions the synthetic findings live in.

pub use mg3d_core::labels::CT_RATE_LABELS;

/// The findings this generator draws into the voxels (13 of the 18 labels).
pub const RENDERED: [&str; 13] = [
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pleural effusion",
    "Consolidation",
];

/// A lung lobe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lobe {
    /// Right upper lobe.
    Rul,
    /// Right middle lobe.
    Rml,
    /// Right lower lobe.
    Rll,
    /// Left upper lobe.
    Lul,
    /// Left lower lobe.
    Lll,
}

impl Lobe {
    /// All lobes.
    pub const ALL: [Lobe; 5] = [Lobe::Rul, Lobe::Rml, Lobe::Rll, Lobe::Lul, Lobe::Lll];
    /// Full name as reports write it.
    pub fn name(self) -> &'static str {
        match self {
            Lobe::Rul => "right upper lobe",
            Lobe::Rml => "right middle lobe",
            Lobe::Rll => "right lower lobe",
            Lobe::Lul => "left upper lobe",
            Lobe::Lll => "left lower lobe",
        }
    }
    /// Abbreviation (RUL, ...).
    pub fn abbr(self) -> &'static str {
        match self {
            Lobe::Rul => "RUL",
            Lobe::Rml => "RML",
            Lobe::Rll => "RLL",
            Lobe::Lul => "LUL",
            Lobe::Lll => "LLL",
        }
    }
    /// True for the right lung.
    pub fn is_right(self) -> bool {
        matches!(self, Lobe::Rul | Lobe::Rml | Lobe::Rll)
    }
}

/// Laterality of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Patient's left.
    Left,
    /// Patient's right.
    Right,
    /// Both sides.
    Bilateral,
}

impl Side {
    /// "left" / "right" / "bilateral".
    pub fn word(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
            Side::Bilateral => "bilateral",
        }
    }
}
