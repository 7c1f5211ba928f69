//! The `graph` stage: entities (+ clauses, + patients from ingest when present) -> signatures,
//! collapsed nodes, scored edges, top-k neighbours per report, and graph statistics.
//!
//! polars does the relational part (observation -> linked anatomy self-join, report -> patient
//! join); rayon scores candidate pairs; the contract tables are written as typed rows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use mg3d_core::rows::{EdgesRow, NeighborsRow, RegionMentionsRow, SignaturesRow};
use mg3d_core::stage::{InputDecl, ParamDef, Params, Stage, StageContext, StageError};
use mg3d_core::table::{TableSchema, TableWriter, write_rows};
use polars::prelude::*;
use serde_json::{Value, json};

use crate::GraphError;
use crate::graph::{GraphParams, build, id_key};
use crate::regions::Layout;
use crate::signature::{Metric, Signature, SignatureBuilder, State, explain};

/// The built-in region layout (configs/graph/regions.toml).
pub const DEFAULT_REGIONS: &str = include_str!("../../../configs/graph/regions.toml");

/// The `graph` stage.
pub struct GraphStage;

mg3d_core::stage_params! {
    /// The parameters of the stage, declared once: `mg3d stages` lists them from here.
    pub(crate) struct GraphStageParams {
        /// regions/findings layout TOML (empty = configs/graph/regions.toml, built in)
        regions: String = json!(""),
        /// neighbours kept per report (other patients only)
        top_k: i64 = json!(10),
        /// edges between distinct signatures are kept at or above this weight
        min_weight: f64 = json!(0.7),
    }
}

fn layout_of(p: &GraphStageParams) -> Result<Layout, GraphError> {
    if p.regions.is_empty() {
        Layout::parse(DEFAULT_REGIONS, "configs/graph/regions.toml (built in)")
    } else {
        Layout::load(Path::new(&p.regions))
    }
}

fn pl_err(what: &str) -> impl Fn(PolarsError) -> GraphError + '_ {
    move |e| GraphError::Input(format!("{what}: {e}"))
}

fn scan(path: &Path) -> Result<LazyFrame, GraphError> {
    let s = path.to_str().ok_or_else(|| GraphError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    if !path.is_file() {
        return Err(GraphError::Missing {
            path: path.to_path_buf(),
        });
    }
    LazyFrame::scan_parquet(PlRefPath::from(s), ScanArgsParquet::default())
        .map_err(pl_err(&path.display().to_string()))
}

/// Everything the graph needs from the inputs, as plain Rust.
pub struct GraphInputs {
    /// Report pseudonyms, sorted.
    pub report_ids: Vec<String>,
    /// Patient of each report (a dense index) and the patient ids.
    pub patients: Vec<u32>,
    /// Patient pseudonyms (by dense index).
    pub patient_ids: Vec<String>,
    /// Signature of each report.
    pub signatures: Vec<Signature>,
    /// Per report: region -> clause ids mentioning it.
    pub region_clauses: Vec<BTreeMap<usize, BTreeSet<i32>>>,
}

fn strs(df: &DataFrame, name: &str) -> Result<Vec<Option<String>>, StageError> {
    let c = df.column(name).map_err(pl_err(name))?;
    Ok(c.str()
        .map_err(pl_err(name))?
        .iter()
        .map(|o| o.map(str::to_string))
        .collect())
}

fn ints(df: &DataFrame, name: &str) -> Result<Vec<Option<i32>>, StageError> {
    let c = df.column(name).map_err(pl_err(name))?;
    let c = c.cast(&DataType::Int32).map_err(pl_err(name))?;
    Ok(c.i32().map_err(pl_err(name))?.iter().collect())
}

fn bools(df: &DataFrame, name: &str) -> Result<Vec<Option<bool>>, StageError> {
    let c = df.column(name).map_err(pl_err(name))?;
    Ok(c.bool().map_err(pl_err(name))?.iter().collect())
}

/// Report ids (sorted), each report's patient index, and the patients: from ingest's volumes
/// (by report key) when given, else each report its own patient.
type Reports = (Vec<String>, Vec<u32>, Vec<String>);

fn load_reports(reports_dir: &Path, ingest_dir: Option<&Path>) -> Result<Reports, StageError> {
    let reports =
        scan(&reports_dir.join("reports.parquet"))?.select([col("report_id"), col("report_key")]);
    let reports = match ingest_dir {
        Some(d) => {
            let vols = scan(&d.join("volumes.parquet"))?
                .select([col("report_key"), col("patient_id")])
                .group_by([col("report_key")])
                .agg([col("patient_id").min()]);
            reports.join(
                vols,
                [col("report_key")],
                [col("report_key")],
                JoinArgs::new(JoinType::Left),
            )
        }
        None => reports.with_column(lit(NULL).cast(DataType::String).alias("patient_id")),
    };
    let reports = reports
        .sort(["report_id"], SortMultipleOptions::default())
        .collect()
        .map_err(pl_err("reports"))?;
    let report_ids: Vec<String> = strs(&reports, "report_id")?
        .into_iter()
        .map(|o| o.unwrap_or_default())
        .collect();
    let pids = strs(&reports, "patient_id")?;
    let mut patient_index: BTreeMap<String, u32> = BTreeMap::new();
    let mut patient_ids = Vec::new();
    let mut patients = Vec::with_capacity(report_ids.len());
    for (rid, pid) in report_ids.iter().zip(pids) {
        let pid = pid.unwrap_or_else(|| format!("report:{rid}"));
        let next = patient_ids.len() as u32;
        let idx = *patient_index.entry(pid.clone()).or_insert_with(|| {
            patient_ids.push(pid);
            next
        });
        patients.push(idx);
    }
    Ok((report_ids, patients, patient_ids))
}

/// A clause's section, byte span and index.
type ClauseSpan = (String, i32, i32, i32);

/// Every report's clauses (section, byte span, index), to place entities in their clause.
fn load_clause_spans(reports_dir: &Path) -> Result<BTreeMap<String, Vec<ClauseSpan>>, StageError> {
    let clauses = scan(&reports_dir.join("clauses.parquet"))?
        .select([
            col("report_id"),
            col("section"),
            col("clause_idx"),
            col("char_start"),
            col("char_end"),
        ])
        .collect()
        .map_err(pl_err("clauses"))?;
    let (c_rep, c_sec) = (strs(&clauses, "report_id")?, strs(&clauses, "section")?);
    let (c_idx, c_a, c_b) = (
        ints(&clauses, "clause_idx")?,
        ints(&clauses, "char_start")?,
        ints(&clauses, "char_end")?,
    );
    let mut clause_map: BTreeMap<String, Vec<ClauseSpan>> = BTreeMap::new();
    for i in 0..c_rep.len() {
        if let (Some(r), Some(s), Some(k), Some(a), Some(b)) =
            (&c_rep[i], &c_sec[i], c_idx[i], c_a[i], c_b[i])
        {
            clause_map
                .entry(r.clone())
                .or_default()
                .push((s.clone(), a, b, k));
        }
    }
    Ok(clause_map)
}

/// The entities in (report, index) order, each joined to the anatomy entity it is located at
/// (`anatomy_term`, `anatomy_laterality`).
fn load_entities(entities_dir: &Path) -> Result<DataFrame, StageError> {
    let ents = scan(&entities_dir.join("entities.parquet"))?.select([
        col("report_id"),
        col("section"),
        col("ent_idx"),
        col("char_start"),
        col("norm_term"),
        col("type"),
        col("assertion"),
        col("hypothetical"),
        col("laterality"),
        col("located_at"),
    ]);
    let anatomy = ents.clone().filter(col("type").eq(lit("ANATOMY"))).select([
        col("report_id").alias("a_report"),
        col("ent_idx").alias("a_idx"),
        col("norm_term").alias("anatomy_term"),
        col("laterality").alias("anatomy_laterality"),
    ]);
    let ents = ents
        .join(
            anatomy,
            [col("report_id"), col("located_at")],
            [col("a_report"), col("a_idx")],
            JoinArgs::new(JoinType::Left),
        )
        .sort(["report_id", "ent_idx"], SortMultipleOptions::default())
        .collect()
        .map_err(pl_err("entities"))?;
    Ok(ents)
}

/// Reads the inputs: `reports_dir` (reports.parquet, clauses.parquet), `entities_dir`
/// (entities.parquet) and optionally `ingest_dir` (volumes.parquet, for patients).
/// Without ingest (or for a report no volume names) the report is its own patient.
pub fn load_inputs(
    layout: &Layout,
    reports_dir: &Path,
    entities_dir: &Path,
    ingest_dir: Option<&Path>,
) -> Result<GraphInputs, StageError> {
    // Reports and their patients.
    let (report_ids, patients, patient_ids) = load_reports(reports_dir, ingest_dir)?;
    let report_pos: BTreeMap<&str, usize> = report_ids
        .iter()
        .enumerate()
        .map(|(i, r)| (r.as_str(), i))
        .collect();

    // Clauses by report, for clause ids per region.
    let clause_map = load_clause_spans(reports_dir)?;
    let clause_of = |report: &str, section: &str, at: i32| -> Option<i32> {
        clause_map.get(report).and_then(|v| {
            v.iter()
                .find(|(s, a, b, _)| s == section && *a <= at && at < *b)
                .map(|c| c.3)
        })
    };

    // Entities, each observation joined to the anatomy entity it is located at.
    let ents = load_entities(entities_dir)?;
    let (e_rep, e_sec, e_start) = (
        strs(&ents, "report_id")?,
        strs(&ents, "section")?,
        ints(&ents, "char_start")?,
    );
    let (e_term, e_type, e_assert) = (
        strs(&ents, "norm_term")?,
        strs(&ents, "type")?,
        strs(&ents, "assertion")?,
    );
    let (e_hyp, e_lat) = (bools(&ents, "hypothetical")?, strs(&ents, "laterality")?);
    let (a_term, a_lat) = (
        strs(&ents, "anatomy_term")?,
        strs(&ents, "anatomy_laterality")?,
    );

    let mut builders: Vec<SignatureBuilder> = (0..report_ids.len())
        .map(|_| SignatureBuilder::new(layout))
        .collect();
    let mut region_clauses: Vec<BTreeMap<usize, BTreeSet<i32>>> =
        vec![BTreeMap::new(); report_ids.len()];
    for i in 0..e_rep.len() {
        let (Some(rep), Some(term), Some(ty)) = (&e_rep[i], &e_term[i], &e_type[i]) else {
            continue;
        };
        // Entities of reports not in reports.parquet cannot be placed; the join above keeps them
        // out of the graph, and the stage summary counts them.
        let Some(&r) = report_pos.get(rep.as_str()) else {
            continue;
        };
        let lat = e_lat[i].as_deref();
        let regions = if ty == "ANATOMY" {
            let regs = layout.anatomy_regions(term, lat);
            for &g in &regs {
                builders[r].mention(g);
            }
            regs
        } else {
            let Some(mut state) = e_assert[i].as_deref().and_then(State::from_assertion) else {
                continue;
            };
            if e_hyp[i] == Some(true) && state == State::Present {
                state = State::Uncertain;
            }
            let f = layout.finding_index(term);
            let lat = lat.or(a_lat[i].as_deref());
            let regs = layout.observation_regions(f, a_term[i].as_deref(), lat);
            for &g in &regs {
                builders[r].observe(g, f, state);
            }
            regs
        };
        if let (Some(sec), Some(at)) = (&e_sec[i], e_start[i])
            && let Some(c) = clause_of(rep, sec, at)
        {
            for g in regions {
                region_clauses[r].entry(g).or_default().insert(c);
            }
        }
    }
    Ok(GraphInputs {
        report_ids,
        patients,
        patient_ids,
        signatures: builders.into_iter().map(SignatureBuilder::finish).collect(),
        region_clauses,
    })
}

/// region_mentions.parquet: one row per report x mentioned region, with its finding states and
/// the clauses that mention the region.
fn write_region_mentions(
    layout: &Layout,
    inputs: &GraphInputs,
    out: &Path,
) -> Result<(), StageError> {
    let nf = layout.findings.len();
    let mut rows: Vec<RegionMentionsRow> = Vec::new();
    for (r, s) in inputs.signatures.iter().enumerate() {
        for g in 0..layout.regions.len() {
            if s.mentioned >> g & 1 == 0 {
                continue;
            }
            rows.push(RegionMentionsRow {
                report_id: inputs.report_ids[r].clone(),
                region: layout.regions[g].clone(),
                findings: s
                    .states
                    .iter()
                    .filter(|&&(slot, _)| slot as usize / nf == g)
                    .map(|&(slot, st)| {
                        format!("{}:{}", layout.findings[slot as usize % nf], st.as_str())
                    })
                    .collect(),
                clause_ids: inputs.region_clauses[r]
                    .get(&g)
                    .map(|c| c.iter().copied().collect())
                    .unwrap_or_default(),
            });
        }
    }
    write_rows(&out.join("region_mentions.parquet"), &rows)?;
    Ok(())
}

/// edges.parquet (between nodes), with the per-region breakdown, written in batches.
fn write_edges(
    layout: &Layout,
    graph: &crate::graph::Graph,
    metric: &Metric,
    out: &Path,
) -> Result<(), StageError> {
    let nf = layout.findings.len();
    let mut writer = TableWriter::create(&out.join("edges.parquet"), &TableSchema::get("edges")?)?;
    let members = |x: u32| graph.nodes[x as usize].members.len() as i32;
    for chunk in graph.edges.chunks(1 << 16) {
        let rows: Vec<EdgesRow> = chunk
            .iter()
            .map(|&(a, b, weight)| {
                let ex = explain(
                    &graph.nodes[a as usize].signature,
                    &graph.nodes[b as usize].signature,
                    metric,
                );
                EdgesRow {
                    src: a as i32,
                    dst: b as i32,
                    weight,
                    regions: ex
                        .regions
                        .iter()
                        .map(|&(g, _, _)| layout.regions[g].clone())
                        .collect(),
                    region_weights: ex.regions.iter().map(|&(_, s, _)| s).collect(),
                    shared_terms: ex
                        .shared
                        .iter()
                        .map(|&slot| {
                            format!(
                                "{}:{}",
                                layout.regions[slot as usize / nf],
                                layout.findings[slot as usize % nf]
                            )
                        })
                        .collect(),
                    src_reports: members(a),
                    dst_reports: members(b),
                }
            })
            .collect();
        writer.write_rows(&rows)?;
    }
    writer.finish()?;
    Ok(())
}

/// neighbors.parquet: each report's top `k` neighbours from other patients. Returns the rows
/// written and how many reports have each number of neighbours.
fn write_neighbors(
    inputs: &GraphInputs,
    graph: &crate::graph::Graph,
    patient_of: &[&str],
    k: usize,
    out: &Path,
) -> Result<(usize, BTreeMap<usize, usize>), StageError> {
    let keys: Vec<u64> = inputs.report_ids.iter().map(|r| id_key(r)).collect();
    let top = graph.top_k(&keys, &inputs.patients, k);
    let mut rows: Vec<NeighborsRow> = Vec::new();
    let mut degree_hist: BTreeMap<usize, usize> = BTreeMap::new();
    for (r, list) in top.iter().enumerate() {
        *degree_hist.entry(list.len()).or_default() += 1;
        for (rank, &(c, w)) in list.iter().enumerate() {
            rows.push(NeighborsRow {
                report_id: inputs.report_ids[r].clone(),
                neighbor_report_id: inputs.report_ids[c as usize].clone(),
                rank: rank as i32 + 1,
                weight: w,
                patient_id: patient_of[r].to_string(),
                neighbor_patient_id: patient_of[c as usize].to_string(),
            });
        }
    }
    write_rows(&out.join("neighbors.parquet"), &rows)?;
    Ok((rows.len(), degree_hist))
}

/// Builds the graph from loaded inputs and writes every output into `out`. Returns the stats.
pub fn build_and_write(
    layout: &Layout,
    inputs: &GraphInputs,
    params: &GraphParams,
    out: &Path,
) -> Result<Value, StageError> {
    let nf = layout.findings.len();
    let sim = layout.similarity;
    let metric = Metric::of(layout);
    // Enough nearest reports per node for top-k after dropping a patient's own other reports.
    let mut per_patient = vec![0usize; inputs.patient_ids.len()];
    for &p in &inputs.patients {
        per_patient[p as usize] += 1;
    }
    let margin = per_patient
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .saturating_sub(1);
    let graph = build(&inputs.signatures, &metric, params, params.top_k + margin);
    let n = inputs.report_ids.len();

    let patient_of: Vec<&str> = inputs
        .patients
        .iter()
        .map(|&p| inputs.patient_ids[p as usize].as_str())
        .collect();
    let signatures: Vec<SignaturesRow> = inputs
        .signatures
        .iter()
        .enumerate()
        .map(|(r, s)| {
            let abnormal = s.abnormal_terms(layout);
            SignaturesRow {
                report_id: inputs.report_ids[r].clone(),
                patient_id: patient_of[r].to_string(),
                node_id: graph.report_node[r] as i32,
                n_abnormal: abnormal.len() as i32,
                abnormal,
                signature: s.to_dense(layout),
            }
        })
        .collect();
    write_rows(&out.join("signatures.parquet"), &signatures)?;

    write_region_mentions(layout, inputs, out)?;

    write_edges(layout, &graph, &metric, out)?;

    // neighbors.parquet: top-k per report from other patients.
    let k = params.top_k;
    let (neighbor_rows, degree_hist) = write_neighbors(inputs, &graph, &patient_of, k, out)?;

    // graph_stats.json
    let mut node_degree: BTreeMap<usize, usize> = BTreeMap::new();
    for v in graph.adjacency() {
        *node_degree.entry(v.len()).or_default() += 1;
    }
    let comps = graph.component_sizes();
    let largest_node = graph
        .nodes
        .iter()
        .map(|n| n.members.len())
        .max()
        .unwrap_or(0);
    let hist = |m: &BTreeMap<usize, usize>| -> Value {
        Value::Array(
            m.iter()
                .map(|(d, c)| json!({"degree": d, "count": c}))
                .collect(),
        )
    };
    let stats = json!({
        "reports": n,
        "patients": inputs.patient_ids.len(),
        "nodes": graph.nodes.len(),
        "collapsed_reports": n - graph.nodes.len(),
        "abnormal_region_masks": graph.nodes.iter().map(|x| x.signature.abnormal_regions(nf)).collect::<BTreeSet<u64>>().len(),
        "largest_node_reports": largest_node,
        "empty_signature_reports": inputs.signatures.iter().filter(|s| s.mentioned == 0).count(),
        "edges": graph.edges.len(),
        "scored_pairs": graph.scored_pairs,
        "top_k": k,
        "min_weight": params.min_weight,
        "neighbor_rows": neighbor_rows,
        "reports_with_full_top_k": degree_hist.get(&k).copied().unwrap_or(0),
        "neighbors_per_report": hist(&degree_hist),
        "node_degree": hist(&node_degree),
        "components": comps.len(),
        "largest_component_reports": comps.first().copied().unwrap_or(0),
        "component_sizes_top10": comps.iter().take(10).collect::<Vec<_>>(),
        "layout": {
            "regions": layout.regions,
            "findings": layout.findings,
            "signature_len": layout.dense_len(),
            "region_stride": layout.region_stride(),
            "codes": {"0": "not mentioned", "1": "absent", "2": "uncertain", "3": "present"},
        },
        "similarity": {
            "normal_region_weight": sim.normal_region_weight,
            "uncertain_weight": sim.uncertain_weight,
        },
    });
    let text = serde_json::to_string_pretty(&stats).map_err(|e| StageError::ctx("stats", e))?;
    let path = out.join("graph_stats.json");
    std::fs::write(&path, text + "\n").map_err(|source| GraphError::Io { path, source })?;
    Ok(stats)
}

impl Stage for GraphStage {
    fn kind(&self) -> &'static str {
        "graph"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn describe(&self) -> &'static str {
        "cross-patient graph: per-region signatures, collapsed nodes, scored edges, top-k neighbours"
    }
    fn params(&self) -> Vec<ParamDef> {
        GraphStageParams::defs()
    }
    fn inputs(&self) -> Vec<InputDecl> {
        vec![
            InputDecl {
                kind: "reports",
                required: true,
            },
            InputDecl {
                kind: "entities",
                required: true,
            },
            InputDecl {
                kind: "ingest",
                required: false,
            },
        ]
    }
    fn sources_fingerprint(&self, params: &Params) -> Result<Option<String>, StageError> {
        let p: GraphStageParams = params.parse()?;
        let text = if p.regions.is_empty() {
            DEFAULT_REGIONS.to_string()
        } else {
            std::fs::read_to_string(&p.regions).map_err(|source| GraphError::Io {
                path: p.regions.clone().into(),
                source,
            })?
        };
        Ok(Some(blake3::hash(text.as_bytes()).to_hex().to_string()))
    }
    fn run(&self, ctx: &StageContext) -> Result<Value, StageError> {
        let p: GraphStageParams = ctx.params.parse()?;
        if p.top_k < 1 || !(0.0..=1.0).contains(&p.min_weight) {
            return Err(GraphError::Params(
                "top_k must be >= 1 and min_weight within 0..=1".into(),
            )
            .into());
        }
        let layout = layout_of(&p)?;
        let ingest = ctx.input("ingest").ok();
        let inputs = load_inputs(
            &layout,
            ctx.input("reports")?,
            ctx.input("entities")?,
            ingest,
        )?;
        ctx.check_cancelled()?;
        let params = GraphParams {
            top_k: p.top_k as usize,
            min_weight: p.min_weight as f32,
        };
        let stats = ctx
            .pool
            .install(|| build_and_write(&layout, &inputs, &params, &ctx.out_dir))?;
        Ok(json!({
            "reports": stats["reports"],
            "nodes": stats["nodes"],
            "edges": stats["edges"],
            "neighbor_rows": stats["neighbor_rows"],
        }))
    }
}
