//! The volume geometry planned once, by preprocess (`plan.json` in its output): the stages
//! downstream (shards, train) check their own settings against it before any work, so a shape or
//! window set in two places cannot silently disagree.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stage::StageError;

/// The file in the preprocess output.
pub const PLAN_FILE: &str = "plan.json";

/// What every preprocessed volume is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumePlan {
    /// The preset's name or file.
    pub preset: String,
    /// Voxel axis order of the volumes: "RAS" (i along Right, j along Anterior, k along Superior).
    pub axis_order: String,
    /// Voxels along R, A, S.
    pub shape_ras: [usize; 3],
    /// Voxel spacing along R, A, S (mm).
    pub spacing_mm: [f64; 3],
    /// The HU window the volumes were clipped to: [low, high].
    pub window: [f64; 2],
}

impl VolumePlan {
    /// Writes `dir/plan.json`.
    pub fn write(&self, dir: &Path) -> Result<(), StageError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| StageError::ctx(PLAN_FILE, e))?;
        std::fs::write(dir.join(PLAN_FILE), text + "\n")?;
        Ok(())
    }

    /// Reads `dir/plan.json`; `None` when a preprocess output predates it.
    pub fn read(dir: &Path) -> Result<Option<VolumePlan>, StageError> {
        let path = dir.join(PLAN_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StageError::ctx(path.display(), e))
    }
}
