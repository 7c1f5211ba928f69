//! The region/finding layout of signatures, loaded from `configs/graph/regions.toml`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::GraphError;

/// Where a target (anatomy term or finding default) places an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One region.
    Region(usize),
    /// A lateral family: split by laterality.
    Family(String),
}

/// Tunables of the similarity (the `[similarity]` table).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarityParams {
    /// Weight of a region both reports mention as normal, relative to an abnormal region (1).
    pub normal_region_weight: f32,
    /// How much an uncertain finding counts relative to a present one.
    pub uncertain_weight: f32,
}

impl Default for SimilarityParams {
    fn default() -> Self {
        SimilarityParams {
            normal_region_weight: 0.1,
            uncertain_weight: 0.5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionDef {
    name: String,
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    side: Option<String>,
    #[serde(default)]
    anatomy: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FindingDef {
    term: String,
    region: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionsFile {
    region: Vec<RegionDef>,
    #[serde(default)]
    family: BTreeMap<String, Vec<String>>,
    finding: Vec<FindingDef>,
    #[serde(default)]
    similarity: SimilarityParams,
}

/// The layout: regions, findings (plus a final "other finding" slot) and placement rules.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Region names, in vector order.
    pub regions: Vec<String>,
    /// Finding terms, in vector order; the last one is `"other finding"`.
    pub findings: Vec<String>,
    /// Similarity tunables.
    pub similarity: SimilarityParams,
    anatomy: BTreeMap<String, Target>,
    finding_default: Vec<Target>,
    /// family -> (left regions, right regions)
    families: BTreeMap<String, (Vec<usize>, Vec<usize>)>,
}

/// Name of the catch-all finding slot.
pub const OTHER_FINDING: &str = "other finding";

impl Layout {
    /// Parses a regions file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Layout, GraphError> {
        let bad = |m: String| GraphError::Config(format!("{origin}: {m}"));
        let f: RegionsFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if f.region.is_empty() || f.region.len() > 64 {
            return Err(bad(format!(
                "needs 1..=64 [[region]] entries, has {}",
                f.region.len()
            )));
        }
        let mut regions = Vec::new();
        let mut anatomy = BTreeMap::new();
        let mut families: BTreeMap<String, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
        for (i, r) in f.region.iter().enumerate() {
            if regions.contains(&r.name) {
                return Err(bad(format!("region {:?} is listed twice", r.name)));
            }
            regions.push(r.name.clone());
            for a in &r.anatomy {
                if anatomy.insert(a.clone(), Target::Region(i)).is_some() {
                    return Err(bad(format!("anatomy term {a:?} is in two regions")));
                }
            }
            if let Some(fam) = &r.family {
                let e = families.entry(fam.clone()).or_default();
                match r.side.as_deref() {
                    Some("left") => e.0.push(i),
                    Some("right") => e.1.push(i),
                    Some("bilateral") | None => {
                        e.0.push(i);
                        e.1.push(i);
                    }
                    Some(s) => {
                        return Err(bad(format!(
                            "region {:?}: side must be left, right or bilateral, not {s:?}",
                            r.name
                        )));
                    }
                }
            }
        }
        for (fam, terms) in &f.family {
            if !families.contains_key(fam) {
                return Err(bad(format!(
                    "[family] {fam:?} has no region with family = {fam:?}"
                )));
            }
            for a in terms {
                if anatomy
                    .insert(a.clone(), Target::Family(fam.clone()))
                    .is_some()
                {
                    return Err(bad(format!("anatomy term {a:?} is mapped twice")));
                }
            }
        }
        let target_of = |name: &str| -> Result<Target, GraphError> {
            if let Some(i) = regions.iter().position(|r| r == name) {
                Ok(Target::Region(i))
            } else if families.contains_key(name) {
                Ok(Target::Family(name.to_string()))
            } else {
                Err(bad(format!(
                    "{name:?} is neither a region nor a family; regions: {}",
                    regions.join(", ")
                )))
            }
        };
        let mut findings = Vec::new();
        let mut finding_default = Vec::new();
        for fd in &f.finding {
            if findings.contains(&fd.term) || fd.term == OTHER_FINDING {
                return Err(bad(format!("finding {:?} is listed twice", fd.term)));
            }
            findings.push(fd.term.clone());
            finding_default.push(target_of(&fd.region)?);
        }
        findings.push(OTHER_FINDING.to_string());
        let sim = f.similarity;
        if !(0.0..=1.0).contains(&sim.normal_region_weight)
            || !(0.0..=1.0).contains(&sim.uncertain_weight)
        {
            return Err(bad("similarity weights must be within 0..=1".into()));
        }
        Ok(Layout {
            regions,
            findings,
            similarity: sim,
            anatomy,
            finding_default,
            families,
        })
    }

    /// Loads a regions file.
    pub fn load(path: &Path) -> Result<Layout, GraphError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GraphError::Config(format!("{}: {e}", path.display())))?;
        Layout::parse(&text, &path.display().to_string())
    }

    /// Slots per region in the dense vector: one mention flag plus one per finding.
    pub fn region_stride(&self) -> usize {
        1 + self.findings.len()
    }

    /// Length of the dense signature vector.
    pub fn dense_len(&self) -> usize {
        self.regions.len() * self.region_stride()
    }

    /// Index of a finding term (unknown terms go to the "other finding" slot).
    pub fn finding_index(&self, term: &str) -> usize {
        self.findings[..self.findings.len() - 1]
            .iter()
            .position(|f| f == term)
            .unwrap_or(self.findings.len() - 1)
    }

    fn resolve(&self, target: &Target, laterality: Option<&str>) -> Vec<usize> {
        match target {
            Target::Region(i) => vec![*i],
            Target::Family(fam) => {
                let (left, right) = &self.families[fam];
                let mut v = match laterality {
                    Some("left") => left.clone(),
                    Some("right") => right.clone(),
                    _ => left.iter().chain(right).copied().collect(),
                };
                v.sort_unstable();
                v.dedup();
                v
            }
        }
    }

    /// Regions an anatomy mention names (empty for an unknown term).
    pub fn anatomy_regions(&self, term: &str, laterality: Option<&str>) -> Vec<usize> {
        self.anatomy
            .get(term)
            .map(|t| self.resolve(t, laterality))
            .unwrap_or_default()
    }

    /// Regions an observation is placed in: its linked anatomy when known, else its finding's default.
    /// `laterality` is the observation's own side (falling back to the anatomy's).
    pub fn observation_regions(
        &self,
        finding: usize,
        anatomy_term: Option<&str>,
        laterality: Option<&str>,
    ) -> Vec<usize> {
        if let Some(t) = anatomy_term.and_then(|a| self.anatomy.get(a)) {
            return self.resolve(t, laterality);
        }
        match self.finding_default.get(finding) {
            Some(t) => self.resolve(t, laterality),
            None => Vec::new(),
        }
    }
}
