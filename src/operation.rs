//! The Operation an export request answers with, in the shape of the
//! API's `Operation` resource (`docs/request.md`,
//! `docs/operation.schema.json`).

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Where an operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Accepted, not started.
    Pending,
    /// Exporting.
    Running,
    /// Finished, with or without an error.
    Done,
}

/// One error of a failed operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorItem {
    /// A constant: one of [`crate::request::codes`].
    pub code: String,
    /// The request field at fault, as `exportParams.objectName`.
    pub location: String,
    /// What is wrong, for a person.
    pub message: String,
}

/// The errors of a failed operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationError {
    /// The errors; snapdelta reports the first rule a request breaks.
    pub errors: Vec<ErrorItem>,
}

/// A key and value of a warning's `data`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarningData {
    /// The name of the value.
    pub key: String,
    /// The value, as text.
    pub value: String,
}

/// Something the caller should know about an export that succeeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// A constant: one of [`crate::request::warnings`].
    pub code: String,
    /// What happened, for a person.
    pub message: String,
    /// Values the warning is about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<WarningData>,
}

/// snapdelta's own account of the export (the field `snapdeltaExport`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportStats {
    /// The bucket written to.
    pub bucket_name: String,
    /// The object written.
    pub object_name: String,
    /// The output type, in the API's spelling.
    pub output_type: String,
    /// The base snapshot's name, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_instant_snapshot: Option<String>,
    /// Block size of change detection.
    pub block_size: u64,
    /// Size of the base image (0 without a base).
    pub base_size: u64,
    /// Size of the target image.
    pub target_size: u64,
    /// Number of data extents.
    pub data_extents: u64,
    /// Number of zero extents.
    pub zero_extents: u64,
    /// Bytes in data extents.
    pub data_bytes: u64,
    /// Bytes in zero extents.
    pub zero_bytes: u64,
    /// Bytes of the object written (the data file, for a raw sparse
    /// export).
    pub bytes_written: u64,
    /// Wall time of the export in seconds.
    pub seconds: f64,
    /// The base64 SHA-256 of the key the object is encrypted with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_key_sha256: Option<String>,
}

/// The answer to an export request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Always `compute#operation`.
    pub kind: String,
    /// A fresh unique id (a UUID).
    pub id: String,
    /// `operation-` followed by the id.
    pub name: String,
    /// Always `export`.
    pub operation_type: String,
    /// The target snapshot, as `instantSnapshots/NAME`.
    pub target_link: String,
    /// The caller's `requestId`, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_operation_id: Option<String>,
    /// Where the operation stands.
    pub status: Status,
    /// Optional text on the status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// 0 to 100, only ever rising.
    pub progress: u8,
    /// When the request was received (RFC 3339).
    pub insert_time: String,
    /// When the export started (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the operation finished (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
    /// The HTTP status a service would answer a failure with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_error_status_code: Option<u16>,
    /// The HTTP reason phrase of that status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_error_message: Option<String>,
    /// Things to know about a successful export.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    /// snapdelta's account of the export, once it finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapdelta_export: Option<ExportStats>,
}

/// Now, in RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("the current time formats as RFC 3339")
}

impl Operation {
    /// A new pending operation on the snapshot `target`, received now.
    pub fn new(target: &str, request_id: Option<&str>) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        Operation {
            kind: "compute#operation".into(),
            name: format!("operation-{id}"),
            id,
            operation_type: "export".into(),
            target_link: format!("instantSnapshots/{target}"),
            client_operation_id: request_id.map(str::to_string),
            status: Status::Pending,
            status_message: None,
            progress: 0,
            insert_time: now_rfc3339(),
            start_time: None,
            end_time: None,
            error: None,
            http_error_status_code: None,
            http_error_message: None,
            warnings: Vec::new(),
            snapdelta_export: None,
        }
    }

    /// Whether the operation finished with an error.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Ends the operation now with one error.
    pub fn fail(&mut self, code: &str, location: &str, message: impl Into<String>) {
        let http = http_status(code);
        self.error = Some(OperationError {
            errors: vec![ErrorItem {
                code: code.into(),
                location: location.into(),
                message: message.into(),
            }],
        });
        self.http_error_status_code = Some(http.0);
        self.http_error_message = Some(http.1.into());
        self.finish();
    }

    /// Ends the operation now.
    pub fn finish(&mut self) {
        self.status = Status::Done;
        self.progress = 100;
        self.end_time = Some(now_rfc3339());
    }
}

/// The HTTP status a service would answer an error `code` with.
fn http_status(code: &str) -> (u16, &'static str) {
    use crate::request::codes::*;
    match code {
        RESOURCE_NOT_FOUND => (404, "NOT FOUND"),
        REQUEST_ID_CONFLICT => (409, "CONFLICT"),
        KEY_MISMATCH | KEY_REQUIRED => (403, "FORBIDDEN"),
        IO_ERROR | CORRUPT_INPUT | EXPORT_FAILED => (500, "INTERNAL SERVER ERROR"),
        _ => (400, "BAD REQUEST"),
    }
}
