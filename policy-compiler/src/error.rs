//! The compiler crate's one error enum. Object errors carry the file, the
//! object and the field path so an operator can go straight to the line.

use serde::Serialize;

/// Why one object was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}{kind} {object}: {field}: {message}", source_prefix(.file))]
pub struct ObjectError {
    /// The file (or other source) the object came from, when known.
    pub file: Option<String>,
    pub kind: String,
    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub object: String,
    /// Field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub message: String,
}

fn source_prefix(file: &Option<String>) -> String {
    file.as_ref().map(|s| format!("{s}: ")).unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidObject(#[from] ObjectError),
    /// The text is not YAML, or exceeds a parsing limit; the message
    /// names the line and column.
    #[error("{file}: {message}")]
    Yaml { file: String, message: String },
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidObject(_) => "invalid_object",
            Error::Yaml { .. } => "yaml",
        }
    }
}
