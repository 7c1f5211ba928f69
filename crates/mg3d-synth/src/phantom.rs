//! Chest phantoms in Hounsfield units, defined in DICOM patient coordinates (LPS, mm) with the
//! origin at the centre of the scanned body section. `x` grows to the patient's left, `y` to the
//! posterior, `z` to the head. Anatomy is drawn per patient at random but plausible sizes; findings
//! are drawn into it with their location and size recorded as truth.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::catalog::{Lobe, Side};

/// A sphere (centre in LPS mm, radius mm).
#[derive(Debug, Clone, Copy)]
pub struct Ball {
    /// Centre, LPS mm.
    pub c: [f64; 3],
    /// Radius, mm.
    pub r: f64,
}

impl Ball {
    #[inline]
    fn contains(&self, p: [f64; 3]) -> bool {
        let d = [p[0] - self.c[0], p[1] - self.c[1], p[2] - self.c[2]];
        d[0] * d[0] + d[1] * d[1] + d[2] * d[2] <= self.r * self.r
    }
}

/// An axis-aligned ellipsoid.
#[derive(Debug, Clone, Copy)]
pub struct Ellipsoid {
    /// Centre, LPS mm.
    pub c: [f64; 3],
    /// Half-axes, mm.
    pub h: [f64; 3],
}

impl Ellipsoid {
    #[inline]
    fn q(&self, p: [f64; 3]) -> f64 {
        let u = (p[0] - self.c[0]) / self.h[0];
        let v = (p[1] - self.c[1]) / self.h[1];
        let w = (p[2] - self.c[2]) / self.h[2];
        u * u + v * v + w * w
    }
    #[inline]
    fn contains(&self, p: [f64; 3]) -> bool {
        self.q(p) <= 1.0
    }
    fn scaled(&self, s: f64) -> Ellipsoid {
        Ellipsoid {
            c: self.c,
            h: [self.h[0] * s, self.h[1] * s, self.h[2] * s],
        }
    }
}

/// A capsule (segment a-b with radius r).
#[derive(Debug, Clone, Copy)]
pub struct Tube {
    /// Start, LPS mm.
    pub a: [f64; 3],
    /// End, LPS mm.
    pub b: [f64; 3],
    /// Radius, mm.
    pub r: f64,
}

impl Tube {
    #[inline]
    fn dist2(&self, p: [f64; 3]) -> f64 {
        let ab = [
            self.b[0] - self.a[0],
            self.b[1] - self.a[1],
            self.b[2] - self.a[2],
        ];
        let ap = [p[0] - self.a[0], p[1] - self.a[1], p[2] - self.a[2]];
        let l2 = ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2];
        let t = if l2 > 0.0 {
            ((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / l2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let d = [ap[0] - t * ab[0], ap[1] - t * ab[1], ap[2] - t * ab[2]];
        d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    }
    #[inline]
    fn contains(&self, p: [f64; 3]) -> bool {
        self.dist2(p) <= self.r * self.r
    }
}

/// Which way gravity pulls in patient coordinates (fluid layers, the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posture {
    /// Lying on the back: dependent side is posterior (+y).
    Supine,
    /// Lying on the front: dependent side is anterior (-y).
    Prone,
}

/// One finding drawn into a phantom, with its truth.
#[derive(Debug, Clone)]
pub struct RenderedFinding {
    /// CT-RATE label.
    pub label: &'static str,
    /// Region name as reports write it.
    pub region: String,
    /// Region abbreviation (RUL, ...), or the region again.
    pub region_abbr: String,
    /// Laterality where it applies.
    pub side: Option<Side>,
    /// Largest diameter / thickness / depth in mm where it applies.
    pub size_mm: Option<f64>,
    /// Centre in LPS mm, for blob findings.
    pub center_lps: Option<[f64; 3]>,
    /// Drawn subtle (reports may hedge it).
    pub subtle: bool,
}

/// A patient's anatomy and findings; [`Phantom::hu`] gives the HU at any point.
#[derive(Debug, Clone)]
pub struct Phantom {
    /// Body half-width (x), mm.
    pub a: f64,
    /// Body half-depth (y), mm.
    pub b: f64,
    /// Scanned length (z), mm.
    pub len: f64,
    fat: f64,
    muscle: f64,
    posture: Posture,
    lungs: [Ellipsoid; 2],
    fissure_z: [f64; 2],
    horizontal_fissure_z: f64,
    heart: Ellipsoid,
    pericardial_shell: f64,
    aorta: Vec<Tube>,
    trachea: Vec<Tube>,
    vessels: Vec<Tube>,
    esophagus: Tube,
    spine_c: [f64; 2],
    spine_r: f64,
    rib_period: f64,
    // Findings
    nodules: Vec<Ball>,
    consolidations: Vec<Ellipsoid>,
    opacities: Vec<Ellipsoid>,
    emphysema: Vec<Ball>,
    atelectasis: Vec<Ellipsoid>,
    effusion: [Option<f64>; 2],
    calcs: Vec<(Ball, f64)>,
    nodes: Vec<Ball>,
    hernia: Option<Ball>,
    device: Option<([f64; 3], [f64; 3], Tube)>,
    /// Truth for every drawn finding.
    pub findings: Vec<RenderedFinding>,
    /// Noise standard deviation in HU.
    pub noise_sd: f64,
}

/// Parameters for drawing one phantom.
#[derive(Debug, Clone)]
pub struct PhantomSpec {
    /// Body width range (mm).
    pub body_width_mm: [f64; 2],
    /// Scanned length range (mm).
    pub z_extent_mm: [f64; 2],
    /// Patient posture.
    pub posture: Posture,
}

fn uni(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

const RIGHT: usize = 0;
const LEFT: usize = 1;

impl Phantom {
    /// Draws a healthy anatomy.
    pub fn new(spec: &PhantomSpec, rng: &mut ChaCha8Rng) -> Phantom {
        let a = uni(rng, spec.body_width_mm[0], spec.body_width_mm[1]) / 2.0;
        let b = a * uni(rng, 0.62, 0.75);
        let len = uni(rng, spec.z_extent_mm[0], spec.z_extent_mm[1]);
        let lung_h = [0.36 * a, 0.62 * b, 0.55 * len];
        // Lungs: right at -x (patient right), left at +x.
        let lungs = [
            Ellipsoid {
                c: [-0.45 * a, 0.05 * b, 0.05 * len],
                h: lung_h,
            },
            Ellipsoid {
                c: [0.45 * a, 0.05 * b, 0.05 * len],
                h: [lung_h[0] * 0.95, lung_h[1], lung_h[2]],
            },
        ];
        let heart = Ellipsoid {
            c: [0.12 * a, -0.22 * b, -0.18 * len],
            h: [0.30 * a, 0.34 * b, 0.22 * len],
        };
        let z_arch = 0.28 * len;
        let asc = [0.0, -0.18 * b, heart.c[2]];
        let top = [0.02 * a, -0.15 * b, z_arch];
        let back = [0.2 * a, 0.40 * b, z_arch];
        let desc_end = [0.2 * a, 0.40 * b, -0.6 * len];
        let ra = 0.065 * a;
        let aorta = vec![
            Tube {
                a: asc,
                b: top,
                r: ra,
            },
            Tube {
                a: top,
                b: back,
                r: ra,
            },
            Tube {
                a: back,
                b: desc_end,
                r: ra * 0.9,
            },
        ];
        let carina = [0.0, -0.02 * b, 0.12 * len];
        let trachea = vec![
            Tube {
                a: [0.0, -0.05 * b, 0.7 * len],
                b: carina,
                r: 0.07 * a,
            },
            Tube {
                a: carina,
                b: [-0.32 * a, 0.0, -0.02 * len],
                r: 0.04 * a,
            },
            Tube {
                a: carina,
                b: [0.32 * a, 0.02 * b, -0.04 * len],
                r: 0.038 * a,
            },
        ];
        let mut vessels = Vec::new();
        for (side, lung) in lungs.iter().enumerate() {
            let hilum = [if side == RIGHT { -0.22 * a } else { 0.24 * a }, 0.0, 0.0];
            for _ in 0..7 {
                let t = [
                    lung.c[0] + uni(rng, -0.8, 0.8) * lung.h[0],
                    lung.c[1] + uni(rng, -0.8, 0.8) * lung.h[1],
                    lung.c[2] + uni(rng, -0.7, 0.7) * lung.h[2],
                ];
                vessels.push(Tube {
                    a: hilum,
                    b: t,
                    r: uni(rng, 0.01, 0.02) * a,
                });
            }
        }
        let fissure_z = [uni(rng, -0.05, 0.1) * len, uni(rng, -0.05, 0.1) * len];
        Phantom {
            a,
            b,
            len,
            fat: uni(rng, 0.05, 0.12),
            muscle: uni(rng, 0.05, 0.08),
            posture: spec.posture,
            lungs,
            fissure_z,
            horizontal_fissure_z: fissure_z[RIGHT] + 0.18 * len,
            heart,
            pericardial_shell: 0.0,
            aorta,
            trachea,
            vessels,
            esophagus: Tube {
                a: [0.03 * a, 0.30 * b, 0.7 * len],
                b: [0.05 * a, 0.28 * b, -0.7 * len],
                r: 0.035 * a,
            },
            spine_c: [0.0, 0.58 * b],
            spine_r: 0.13 * a,
            rib_period: uni(rng, 0.16, 0.2) * len.max(120.0),
            nodules: vec![],
            consolidations: vec![],
            opacities: vec![],
            emphysema: vec![],
            atelectasis: vec![],
            effusion: [None, None],
            calcs: vec![],
            nodes: vec![],
            hernia: None,
            device: None,
            findings: vec![],
            noise_sd: uni(rng, 8.0, 20.0),
        }
    }

    /// Scale of findings relative to an adult chest (320 mm wide).
    fn scale(&self) -> f64 {
        (2.0 * self.a / 320.0).clamp(0.3, 1.3)
    }

    /// The lobe of a point inside a lung, if any.
    pub fn lobe_of(&self, p: [f64; 3]) -> Option<Lobe> {
        let side = if self.lungs[RIGHT].contains(p) {
            RIGHT
        } else if self.lungs[LEFT].contains(p) {
            LEFT
        } else {
            return None;
        };
        // Oblique fissure: a plane rising posteriorly; below/behind it is the lower lobe.
        let fz = self.fissure_z[side] + 0.9 * (p[1] - self.lungs[side].c[1]);
        if p[2] < fz {
            return Some(if side == RIGHT { Lobe::Rll } else { Lobe::Lll });
        }
        if side == LEFT {
            return Some(Lobe::Lul);
        }
        Some(if p[2] < self.horizontal_fissure_z {
            Lobe::Rml
        } else {
            Lobe::Rul
        })
    }

    fn in_lung_tissue(&self, p: [f64; 3]) -> bool {
        (self.lungs[RIGHT].contains(p) || self.lungs[LEFT].contains(p))
            && !self.heart.scaled(1.0 + self.pericardial_shell).contains(p)
    }

    /// Whether the z position is inside the scanned section.
    fn in_scan(&self, z: f64) -> bool {
        z.abs() <= self.len / 2.0
    }

    /// A random point in `lobe`, at least `margin` mm inside the lung, within the scanned section.
    fn point_in_lobe(&self, lobe: Lobe, margin: f64, rng: &mut ChaCha8Rng) -> Option<[f64; 3]> {
        let side = if lobe.is_right() { RIGHT } else { LEFT };
        let l = self.lungs[side];
        for _ in 0..4000 {
            let p = [
                l.c[0] + uni(rng, -1.0, 1.0) * l.h[0],
                l.c[1] + uni(rng, -1.0, 1.0) * l.h[1],
                uni(rng, -0.45, 0.45) * self.len,
            ];
            if self.lobe_of(p) != Some(lobe) || !self.in_lung_tissue(p) {
                continue;
            }
            // Margin: the ball of radius `margin` stays in the same lobe (probe 6 directions).
            let ok = [
                [1.0, 0.0, 0.0],
                [-1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [0.0, -1.0, 0.0],
                [0.0, 0.0, 1.0],
                [0.0, 0.0, -1.0],
            ]
            .iter()
            .all(|d| {
                let q = [
                    p[0] + d[0] * margin,
                    p[1] + d[1] * margin,
                    p[2] + d[2] * margin,
                ];
                self.lobe_of(q) == Some(lobe) && self.in_lung_tissue(q) && self.in_scan(q[2])
            });
            if ok {
                return Some(p);
            }
        }
        None
    }

    fn pick_lobe(rng: &mut ChaCha8Rng) -> Lobe {
        Lobe::ALL[rng.random_range(0..5)]
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        label: &'static str,
        region: &str,
        abbr: &str,
        side: Option<Side>,
        size: Option<f64>,
        c: Option<[f64; 3]>,
        subtle: bool,
    ) {
        self.findings.push(RenderedFinding {
            label,
            region: region.to_string(),
            region_abbr: abbr.to_string(),
            side,
            size_mm: size.map(|s| (s * 10.0).round() / 10.0),
            center_lps: c,
            subtle,
        });
    }

    /// Draws finding `label` into the phantom. Returns false when it could not be placed.
    pub fn add_finding(&mut self, label: &'static str, subtle: bool, rng: &mut ChaCha8Rng) -> bool {
        match label {
            "Lung nodule" | "Consolidation" | "Lung opacity" | "Atelectasis" | "Emphysema" => {
                self.add_lung_finding(label, subtle, rng)
            }
            "Pleural effusion" | "Cardiomegaly" | "Pericardial effusion" => {
                self.add_pleural_or_cardiac_finding(label, subtle, rng)
            }
            "Arterial wall calcification" | "Coronary artery wall calcification" => {
                self.add_calcification(label, subtle, rng)
            }
            "Lymphadenopathy" | "Hiatal hernia" | "Medical material" => {
                self.add_other_finding(label, subtle, rng)
            }
            _ => false,
        }
    }

    /// A finding in the lungs: a nodule, consolidation, opacity, atelectasis or emphysema. Returns false when it could not be placed.
    fn add_lung_finding(
        &mut self,
        label: &'static str,
        subtle: bool,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        let s = self.scale();
        match label {
            "Lung nodule" => {
                let d = if subtle {
                    uni(rng, 3.0, 5.0)
                } else {
                    uni(rng, 5.0, 25.0)
                } * s.max(0.6);
                let lobe = Self::pick_lobe(rng);
                let Some(c) = self.point_in_lobe(lobe, d / 2.0 + 2.0, rng) else {
                    return false;
                };
                self.nodules.push(Ball { c, r: d / 2.0 });
                let side = if lobe.is_right() {
                    Side::Right
                } else {
                    Side::Left
                };
                self.push(
                    label,
                    lobe.name(),
                    lobe.abbr(),
                    Some(side),
                    Some(d),
                    Some(c),
                    subtle,
                );
            }
            "Consolidation" | "Lung opacity" | "Atelectasis" => {
                let lobe = match label {
                    "Atelectasis" => [Lobe::Rll, Lobe::Lll][rng.random_range(0..2)],
                    _ => Self::pick_lobe(rng),
                };
                let r = match label {
                    "Consolidation" => uni(rng, 12.0, 25.0),
                    "Lung opacity" => uni(rng, 15.0, 30.0),
                    _ => uni(rng, 8.0, 14.0),
                } * s;
                let Some(c) = self.point_in_lobe(lobe, r * 0.5, rng) else {
                    return false;
                };
                let e = Ellipsoid {
                    c,
                    h: [r, r * uni(rng, 0.6, 1.0), r * uni(rng, 0.6, 1.2)],
                };
                match label {
                    "Consolidation" => self.consolidations.push(e),
                    "Lung opacity" => self.opacities.push(e),
                    _ => self.atelectasis.push(Ellipsoid {
                        c,
                        h: [e.h[0], e.h[1] * 0.4, e.h[2] * 0.5],
                    }),
                }
                let side = if lobe.is_right() {
                    Side::Right
                } else {
                    Side::Left
                };
                self.push(
                    label,
                    lobe.name(),
                    lobe.abbr(),
                    Some(side),
                    Some(2.0 * r),
                    Some(c),
                    subtle,
                );
            }
            "Emphysema" => {
                let lobes: &[Lobe] = if rng.random_bool(0.5) {
                    &[Lobe::Rul, Lobe::Lul]
                } else {
                    &[Lobe::Rul]
                };
                for &lobe in lobes {
                    for _ in 0..30 {
                        let r = uni(rng, 2.0, 5.0) * s.max(0.6);
                        if let Some(c) = self.point_in_lobe(lobe, r, rng) {
                            self.emphysema.push(Ball { c, r });
                        }
                    }
                }
                let (region, abbr, side) = if lobes.len() == 2 {
                    ("upper lobes", "upper lobes", Side::Bilateral)
                } else {
                    ("right upper lobe", "RUL", Side::Right)
                };
                self.push(label, region, abbr, Some(side), None, None, subtle);
            }
            _ => return false,
        }
        true
    }

    /// A pleural effusion, cardiomegaly or a pericardial effusion. Returns false when it could not be placed.
    fn add_pleural_or_cardiac_finding(
        &mut self,
        label: &'static str,
        subtle: bool,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        let s = self.scale();
        match label {
            "Pleural effusion" => {
                let side = [Side::Left, Side::Right, Side::Bilateral][rng.random_range(0..3)];
                let frac = if subtle {
                    uni(rng, 0.1, 0.15)
                } else {
                    uni(rng, 0.2, 0.45)
                };
                let mut depth: f64 = 0.0;
                for (i, sd) in [(RIGHT, Side::Right), (LEFT, Side::Left)] {
                    if side == sd || side == Side::Bilateral {
                        self.effusion[i] = Some(frac);
                        depth = depth.max(2.0 * frac * self.lungs[i].h[1]);
                    }
                }
                let region = match side {
                    Side::Bilateral => "pleura".to_string(),
                    _ => format!("{} pleura", side.word()),
                };
                self.push(
                    label,
                    &region,
                    &region,
                    Some(side),
                    Some(depth),
                    None,
                    subtle,
                );
            }
            "Cardiomegaly" => {
                let k = if subtle {
                    uni(rng, 1.15, 1.2)
                } else {
                    uni(rng, 1.3, 1.45)
                };
                self.heart = self.heart.scaled(k);
                self.push(
                    label,
                    "heart",
                    "heart",
                    None,
                    None,
                    Some(self.heart.c),
                    subtle,
                );
            }
            "Pericardial effusion" => {
                let t = if subtle {
                    uni(rng, 3.0, 4.0)
                } else {
                    uni(rng, 6.0, 15.0)
                } * s.max(0.5);
                self.pericardial_shell = t / self.heart.h[0].min(self.heart.h[1]);
                self.push(
                    label,
                    "pericardium",
                    "pericardium",
                    None,
                    Some(t),
                    Some(self.heart.c),
                    subtle,
                );
            }
            _ => return false,
        }
        true
    }

    /// Arterial or coronary artery wall calcification. Returns false when it could not be placed.
    fn add_calcification(
        &mut self,
        label: &'static str,
        subtle: bool,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        match label {
            "Arterial wall calcification" => {
                let n = if subtle { 2 } else { rng.random_range(4..10) };
                for _ in 0..n {
                    let seg = self.aorta[rng.random_range(0..self.aorta.len())];
                    let t = uni(rng, 0.0, 1.0);
                    let axis = [
                        seg.a[0] + t * (seg.b[0] - seg.a[0]),
                        seg.a[1] + t * (seg.b[1] - seg.a[1]),
                        seg.a[2] + t * (seg.b[2] - seg.a[2]),
                    ];
                    let ang = uni(rng, 0.0, std::f64::consts::TAU);
                    let c = [
                        axis[0] + seg.r * ang.cos(),
                        axis[1] + seg.r * ang.sin(),
                        axis[2],
                    ];
                    if self.in_scan(c[2]) {
                        self.calcs.push((
                            Ball {
                                c,
                                r: uni(rng, 1.5, 3.0),
                            },
                            650.0,
                        ));
                    }
                }
                self.push(label, "aorta", "aorta", None, None, None, subtle);
            }
            "Coronary artery wall calcification" => {
                let n = if subtle { 1 } else { rng.random_range(2..6) };
                for _ in 0..n {
                    // On the anterior-superior surface of the heart (the coronary grooves).
                    let th = uni(rng, 0.2, 1.3);
                    let ph = uni(rng, -2.4, -0.7);
                    let h = self.heart;
                    let c = [
                        h.c[0] + h.h[0] * th.sin() * ph.cos(),
                        h.c[1] + h.h[1] * th.sin() * ph.sin(),
                        h.c[2] + h.h[2] * th.cos(),
                    ];
                    self.calcs.push((
                        Ball {
                            c,
                            r: uni(rng, 1.2, 2.5),
                        },
                        550.0,
                    ));
                }
                self.push(
                    label,
                    "coronary arteries",
                    "coronary arteries",
                    None,
                    None,
                    Some(self.heart.c),
                    subtle,
                );
            }
            _ => return false,
        }
        true
    }

    /// Lymphadenopathy, a hiatal hernia or a device (medical material). Returns false when it could not be placed.
    fn add_other_finding(
        &mut self,
        label: &'static str,
        subtle: bool,
        rng: &mut ChaCha8Rng,
    ) -> bool {
        let s = self.scale();
        match label {
            "Lymphadenopathy" => {
                let stations: [(&str, [f64; 3]); 3] = [
                    (
                        "right paratracheal region",
                        [-0.1 * self.a, -0.08 * self.b, 0.25 * self.len],
                    ),
                    ("subcarinal region", [0.0, 0.12 * self.b, 0.04 * self.len]),
                    (
                        "aortopulmonary window",
                        [0.12 * self.a, -0.05 * self.b, 0.18 * self.len],
                    ),
                ];
                let (name, c) = stations[rng.random_range(0..3)];
                let d = if subtle {
                    uni(rng, 9.0, 11.0)
                } else {
                    uni(rng, 12.0, 24.0)
                } * s.max(0.6);
                self.nodes.push(Ball { c, r: d / 2.0 });
                self.push(label, name, name, None, Some(d), Some(c), subtle);
            }
            "Hiatal hernia" => {
                let r = uni(rng, 12.0, 22.0) * s;
                let c = [0.06 * self.a, 0.22 * self.b, -0.4 * self.len + r];
                self.hernia = Some(Ball { c, r });
                self.push(
                    label,
                    "esophageal hiatus",
                    "hiatus",
                    None,
                    Some(2.0 * r),
                    Some(c),
                    subtle,
                );
            }
            "Medical material" => {
                let g = [0.55 * self.a, -0.85 * self.b, 0.3 * self.len];
                let half = [20.0 * s, 4.0 * s.max(0.5), 24.0 * s];
                let lead = Tube {
                    a: g,
                    b: [
                        self.heart.c[0] - 0.3 * self.heart.h[0],
                        self.heart.c[1],
                        self.heart.c[2],
                    ],
                    r: 1.2,
                };
                self.device = Some((g, half, lead));
                self.push(
                    label,
                    "left chest wall",
                    "left chest wall",
                    Some(Side::Left),
                    None,
                    Some(g),
                    subtle,
                );
            }
            _ => return false,
        }
        true
    }

    /// Hounsfield units at point `p` (LPS mm), before noise.
    pub fn hu(&self, p: [f64; 3]) -> f64 {
        let (a, b) = (self.a, self.b);
        let u = p[0] / a;
        let v = p[1] / b;
        let r = (u * u + v * v).sqrt();
        // Device first: metal outranks everything, also outside the body wall.
        if let Some((g, half, lead)) = &self.device {
            if (p[0] - g[0]).abs() <= half[0]
                && (p[1] - g[1]).abs() <= half[1]
                && (p[2] - g[2]).abs() <= half[2]
            {
                return 3000.0;
            }
            if lead.contains(p) {
                return 2500.0;
            }
        }
        if r > 1.0 {
            // Table: below the patient (posterior when supine, anterior when prone).
            let gap = 0.08 * b;
            let yt = match self.posture {
                Posture::Supine => p[1] - (b + gap),
                Posture::Prone => -(p[1]) - (b + gap),
            };
            if (0.0..=12.0).contains(&yt) && u.abs() < 1.15 {
                return if (3.0..=9.0).contains(&yt) {
                    -300.0
                } else {
                    150.0
                };
            }
            return -1000.0;
        }
        if r > 1.0 - self.fat {
            return -100.0;
        }
        let inner = 1.0 - self.fat - self.muscle;
        // Ribs (in the muscle ring and just inside it), sloping down anteriorly.
        let zr = (p[2] + 0.25 * p[1]).rem_euclid(self.rib_period);
        if r > inner - 0.04 && r <= inner + 0.01 && zr < 0.09 * self.rib_period && v > -0.8 {
            return 700.0;
        }
        if r > inner {
            return 50.0;
        }
        // Sternum.
        if u.abs() < 0.08 && v < -(inner - 0.12) {
            return 400.0;
        }
        // Spine: vertebral body with cortex, discs, canal.
        let dx = p[0] - self.spine_c[0];
        let dy = p[1] - self.spine_c[1];
        let dr = (dx * dx + dy * dy).sqrt();
        if dr <= self.spine_r {
            let disc = (p[2].rem_euclid(24.0)) < 4.0;
            return if disc {
                90.0
            } else if dr > self.spine_r - 2.0 {
                900.0
            } else {
                280.0
            };
        }
        let canal_dy = p[1] - (self.spine_c[1] + 1.35 * self.spine_r);
        if (dx * dx + canal_dy * canal_dy).sqrt() <= 0.45 * self.spine_r {
            return 15.0;
        }
        for (ball, hu) in &self.calcs {
            if ball.contains(p) {
                return *hu;
            }
        }
        // Airways.
        for (i, t) in self.trachea.iter().enumerate() {
            let d2 = t.dist2(p);
            if d2 <= t.r * t.r {
                let wall = if i == 0 { 2.0 } else { 1.5 };
                return if d2.sqrt() > t.r - wall {
                    40.0
                } else {
                    -1000.0
                };
            }
        }
        if let Some(h) = &self.hernia
            && h.contains(p)
        {
            return if p[2] > h.c[2] + 0.2 * h.r {
                -1000.0
            } else if (Ball {
                c: h.c,
                r: h.r - 2.0,
            })
            .contains(p)
            {
                12.0
            } else {
                45.0
            };
        }
        if self.esophagus.contains(p) {
            return if self.esophagus.dist2(p) < 4.0 {
                -900.0
            } else {
                35.0
            };
        }
        for t in &self.aorta {
            if t.contains(p) {
                return 42.0;
            }
        }
        if self.heart.contains(p) {
            return 45.0;
        }
        if self.pericardial_shell > 0.0
            && self.heart.scaled(1.0 + self.pericardial_shell).contains(p)
        {
            return 8.0;
        }
        for n in &self.nodes {
            if n.contains(p) {
                return 38.0;
            }
        }
        for side in [RIGHT, LEFT] {
            let l = &self.lungs[side];
            if l.contains(p) {
                return self.lung_hu(side, l, p);
            }
        }
        // Mediastinal fat and soft tissue.
        -80.0
    }

    fn lung_hu(&self, side: usize, l: &Ellipsoid, p: [f64; 3]) -> f64 {
        if let Some(frac) = self.effusion[side] {
            // Dependent fluid layer: the part of the lung beyond (1 - 2*frac) of its depth.
            let rel = (p[1] - l.c[1]) / l.h[1];
            let dependent = match self.posture {
                Posture::Supine => rel,
                Posture::Prone => -rel,
            };
            if dependent > 1.0 - 2.0 * frac {
                return 10.0;
            }
        }
        for n in &self.nodules {
            if n.contains(p) {
                return 30.0;
            }
        }
        for e in &self.consolidations {
            if e.contains(p) {
                return 35.0;
            }
        }
        for e in &self.atelectasis {
            if e.contains(p) {
                return 20.0;
            }
        }
        for e in &self.opacities {
            if e.contains(p) {
                return -520.0;
            }
        }
        for t in &self.vessels {
            if t.contains(p) {
                return 40.0;
            }
        }
        for h in &self.emphysema {
            if h.contains(p) {
                return -985.0;
            }
        }
        -860.0
    }
}
