//! Errors of generating a corpus: the config, the report templates and the files written.

use std::path::PathBuf;

use mg3d_core::StageError;

/// Errors parsing or filling report templates.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template file is not valid TOML of the templates' shape.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A finding lacks one of its template kinds.
    #[error("finding {0:?} needs present, uncertain, absent and impression templates")]
    Incomplete(String),
    /// A template's markup is broken: nested or unbalanced `<<` `>>`, an unclosed `{`, an unknown
    /// placeholder or one without a value.
    #[error("{detail} in {template:?}")]
    Markup {
        /// The template.
        template: String,
        /// What is wrong in it.
        detail: String,
    },
    /// An entity span names a finding the report makes no statement about.
    #[error("span for {0:?} without a statement")]
    Unstated(String),
    /// A stated finding has no templates.
    #[error("no templates for {0:?}")]
    NoTemplates(String),
    /// A finding stated without being drawn needs a template without placeholders, and has none.
    #[error("{label:?}: no {assertion} template without placeholders")]
    NoPlainTemplate {
        /// The finding.
        label: String,
        /// `present`, `uncertain` or `absent`.
        assertion: &'static str,
    },
}

/// Synth errors.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// Invalid configuration (the message names the field).
    #[error("invalid synth config: {0}")]
    Config(String),
    /// Templates could not be parsed or filled.
    #[error("report templates: {0}")]
    Templates(#[from] TemplateError),
    /// The templates file could not be read.
    #[error("templates file {path}: {source}")]
    TemplatesFile {
        /// The `templates` param.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing an output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Rewriting a written file failed.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Voxels do not fill the volume's dims.
    #[error("{0}")]
    Shape(#[from] ndarray::ShapeError),
    /// A NIfTI file could not be written.
    #[error("{path}: {source}")]
    Nifti {
        /// The file.
        path: PathBuf,
        /// The nifti crate's error.
        source: nifti::NiftiError,
    },
    /// A DICOM object's file meta group could not be built (boxed: the error is large).
    #[error("meta: {0}")]
    DicomMeta(#[source] Box<dicom_object::WithMetaError>),
    /// A DICOM file could not be read back to write a faulty copy (boxed: the error is large).
    #[error("{0}")]
    DicomRead(#[source] Box<dicom_object::ReadError>),
    /// A DICOM file could not be written.
    #[error("{path}: {source}")]
    DicomWrite {
        /// The file.
        path: PathBuf,
        /// The DICOM writer's error (boxed: it is large).
        source: Box<dicom_object::WriteError>,
    },
    /// A truth table could not be written.
    #[error(transparent)]
    Table(#[from] mg3d_core::table::TableError),
}

impl From<SynthError> for StageError {
    fn from(e: SynthError) -> Self {
        StageError::wrap(e)
    }
}
