//! The export request of the API (`instantSnapshots.export`), checked
//! against the API's rules and run against a snapshot directory and a
//! bucket root; the answer is an [`Operation`]. `docs/request.md` lists
//! every rule with its error code and location.
//!
//! - A snapshot `NAME` is `NAME.img` with `NAME.json` beside it in the
//!   snapshot directory ([`SnapshotMeta`]).
//! - A bucket is a directory directly under the bucket root; an object is
//!   one file in it, so `objectName` holds no `/`.
//! - With a `requestId`, the answer is recorded in the state directory
//!   under the id, and a repeated request gets the recorded answer without
//!   a second export, also in another process (a file lock serialises
//!   requests with one id).

use crate::crypt::{sha256_base64, CustomerKey, KeyUnwrapper};
use crate::error::Error;
use crate::export::{Phase, Progress};
use crate::format::raw_sparse::map_path;
use crate::format::OutputType;
use crate::job::{refuse_same_file, run_export, ExportJob};
use crate::operation::{ExportStats, Operation, Status, Warning, WarningData};
use crate::output::AtomicFile;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The error codes of a failed Operation, each a constant.
pub mod codes {
    /// A field the request must have is absent.
    pub const REQUIRED_FIELD_MISSING: &str = "REQUIRED_FIELD_MISSING";
    /// A field's value breaks its rule.
    pub const INVALID_FIELD_VALUE: &str = "INVALID_FIELD_VALUE";
    /// `objectName` is 1024 bytes or longer, or longer than a file name
    /// in the bucket can be.
    pub const FIELD_VALUE_TOO_LONG: &str = "FIELD_VALUE_TOO_LONG";
    /// The request names a field the API does not have.
    pub const UNKNOWN_FIELD: &str = "UNKNOWN_FIELD";
    /// The request body is not a JSON object, or gives a field twice.
    pub const INVALID_REQUEST_BODY: &str = "INVALID_REQUEST_BODY";
    /// A snapshot or bucket does not exist.
    pub const RESOURCE_NOT_FOUND: &str = "RESOURCE_NOT_FOUND";
    /// A snapshot's metadata file is unreadable or malformed.
    pub const INVALID_SNAPSHOT_METADATA: &str = "INVALID_SNAPSHOT_METADATA";
    /// The base snapshot comes from another disk than the target.
    pub const BASE_FROM_OTHER_DISK: &str = "BASE_FROM_OTHER_DISK";
    /// The base snapshot is not older than the target.
    pub const BASE_NOT_OLDER: &str = "BASE_NOT_OLDER";
    /// `objectName` would leave its bucket.
    pub const OBJECT_NAME_OUTSIDE_BUCKET: &str = "OBJECT_NAME_OUTSIDE_BUCKET";
    /// More than one kind of key is given.
    pub const CONFLICTING_FIELDS: &str = "CONFLICTING_FIELDS";
    /// A snapshot protected by a customer key was asked for without it.
    pub const KEY_REQUIRED: &str = "KEY_REQUIRED";
    /// The key given is not the one protecting the snapshot.
    pub const KEY_MISMATCH: &str = "KEY_MISMATCH";
    /// A kind of key this engine (without a [`crate::KeyUnwrapper`])
    /// cannot use.
    pub const UNSUPPORTED_FIELD: &str = "UNSUPPORTED_FIELD";
    /// The output type cannot carry encryption.
    pub const ENCRYPTION_NOT_SUPPORTED: &str = "ENCRYPTION_NOT_SUPPORTED";
    /// The `requestId` was used before with another request.
    pub const REQUEST_ID_CONFLICT: &str = "REQUEST_ID_CONFLICT";
    /// Reading an image or writing the object failed.
    pub const IO_ERROR: &str = "IO_ERROR";
    /// An input is damaged.
    pub const CORRUPT_INPUT: &str = "CORRUPT_INPUT";
    /// The export failed for another reason.
    pub const EXPORT_FAILED: &str = "EXPORT_FAILED";
}

/// The warning codes of a successful Operation, each a constant.
pub mod warnings {
    /// The target has no changes from the base: the object holds none.
    pub const NO_CHANGES_FOUND: &str = "NO_CHANGES_FOUND";
    /// The target is smaller than the base: the disk shrank.
    pub const TARGET_SMALLER_THAN_BASE: &str = "TARGET_SMALLER_THAN_BASE";
    /// An object of that name existed and was replaced.
    pub const OBJECT_REPLACED: &str = "OBJECT_REPLACED";
}

/// The largest request body read, in bytes.
pub const MAX_BODY: usize = 1 << 20;
/// The longest `objectName`, in bytes, is one less than this.
pub const OBJECT_NAME_LIMIT: usize = 1024;
/// The longest `objectName` a bucket's file system takes: a file name is
/// at most 255 bytes, and the temporary name an object is written under
/// (`.NAME.XXXXXX.partial`) and a raw sparse export's map (`NAME.map`)
/// add to it.
pub const OBJECT_FILE_NAME_LIMIT: usize = 255 - 20;
/// The state directory under the bucket root used when none is given.
pub const DEFAULT_STATE_DIR: &str = ".snapdelta-requests";

/// A snapshot's metadata, `NAME.json` beside `NAME.img`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotMeta {
    /// The disk the snapshot was taken of.
    pub source_disk: String,
    /// When it was taken, RFC 3339.
    pub creation_timestamp: String,
    /// When the snapshot is protected by a customer key: that key's
    /// SHA-256, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_sha256: Option<String>,
}

/// Where a request's names resolve, and how wrapped keys are unwrapped.
#[derive(Clone, Copy)]
pub struct RequestContext<'a> {
    /// The snapshot directory.
    pub snapshots: &'a Path,
    /// The bucket root: each bucket is a directory in it.
    pub buckets: &'a Path,
    /// Where requestId records go; `None`: `.snapdelta-requests` in the
    /// bucket root (a name no bucket can have).
    pub state_dir: Option<&'a Path>,
    /// Unwraps `rsaEncryptedKey` and `kmsKeyName`; `None` refuses them.
    pub unwrapper: Option<&'a dyn KeyUnwrapper>,
}

/// A rule broken: the error of a failed Operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// One of [`codes`].
    pub code: &'static str,
    /// The field at fault.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

fn refuse(code: &'static str, location: &str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        location: location.into(),
        message: message.into(),
    }
}

type Checked<T> = std::result::Result<T, Refusal>;

/// A checked request, ready to run.
struct Plan {
    target: PathBuf,
    base: Option<(String, PathBuf, u64)>,
    target_size: u64,
    bucket_name: String,
    object_name: String,
    object: PathBuf,
    output_type: OutputType,
    key: Option<CustomerKey>,
}

/// Runs an export request: `body` is the request body (JSON with
/// `exportParams`), `target` the target snapshot's name (the request
/// path's `instantSnapshot`), `request_id` the optional `requestId`.
///
/// The answer is always an Operation: `DONE`, with `error` set when a
/// rule was broken or the export failed. `progress` receives the
/// operation as it runs (status `RUNNING`, `progress` rising from 0) and
/// finally the answer itself.
pub fn export_request(
    ctx: &RequestContext<'_>,
    target: &str,
    request_id: Option<&str>,
    body: &[u8],
    progress: &mut dyn FnMut(&Operation),
) -> Operation {
    // The Operation echoes the requestId as the request spelt it; its
    // record is kept under the canonical (lower-case) form, so that the
    // spellings of one UUID are one request.
    let mut op = Operation::new(target, request_id);
    let Some(sent) = request_id else {
        run(ctx, target, body, &mut op, progress);
        progress(&op);
        return op;
    };
    let id = match parse_request_id(sent) {
        Ok(id) => id,
        Err(r) => {
            op.fail(r.code, &r.location, r.message);
            progress(&op);
            return op;
        }
    };
    let fingerprint = fingerprint(target, body);
    let default_state = ctx.buckets.join(DEFAULT_STATE_DIR);
    let state = ctx.state_dir.unwrap_or(&default_state);
    let answer = (|| -> crate::Result<Operation> {
        let _lock = lock(state, &id)?;
        let record_path = state.join(format!("{id}.json"));
        if let Some(record) = read_record(&record_path)? {
            if record.fingerprint == fingerprint {
                let mut answer = record.operation;
                answer.client_operation_id = Some(sent.to_string());
                return Ok(answer);
            }
            op.fail(
                codes::REQUEST_ID_CONFLICT,
                "requestId",
                format!("requestId {id} was used for another request; a retry must repeat the request exactly"),
            );
            return Ok(op.clone());
        }
        run(ctx, target, body, &mut op, progress);
        write_record(
            &record_path,
            &Record {
                fingerprint,
                operation: op.clone(),
            },
        )?;
        Ok(op.clone())
    })();
    let answer = answer.unwrap_or_else(|e| {
        let mut op = op.clone();
        op.warnings.clear();
        op.snapdelta_export = None;
        op.fail(
            codes::IO_ERROR,
            "requestId",
            format!("the record of the requestId cannot be kept: {e}"),
        );
        op
    });
    progress(&answer);
    answer
}

/// Checks and runs the request into `op`, which ends `DONE`.
fn run(
    ctx: &RequestContext<'_>,
    target: &str,
    body: &[u8],
    op: &mut Operation,
    progress: &mut dyn FnMut(&Operation),
) {
    let plan = match check(ctx, target, body) {
        Ok(plan) => plan,
        Err(r) => return op.fail(r.code, &r.location, r.message),
    };
    op.status = Status::Running;
    op.start_time = Some(crate::operation::now_rfc3339());
    progress(op);
    let replaced = plan.object.symlink_metadata().is_ok();
    let job = ExportJob {
        base: plan.base.as_ref().map(|b| b.1.clone()),
        target: plan.target.clone(),
        output: plan.object.clone(),
        output_type: plan.output_type,
        force: true,
        key: plan.key.clone(),
        ..ExportJob::default()
    };
    let mut shown = op.clone();
    let result = run_export(&job, &mut |p| {
        let pct = percent(p);
        if pct > shown.progress {
            shown.progress = pct;
            progress(&shown);
        }
    });
    op.progress = shown.progress;
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let (code, location) = match &e {
                Error::Io { path, .. } if path.starts_with(ctx.buckets) => {
                    (codes::IO_ERROR, "exportParams.objectName")
                }
                Error::Io { .. } => (codes::IO_ERROR, "instantSnapshot"),
                Error::Corrupt { .. } => (codes::CORRUPT_INPUT, "instantSnapshot"),
                _ => (codes::EXPORT_FAILED, "exportParams"),
            };
            return op.fail(code, location, e.to_string());
        }
    };
    let base_size = plan.base.as_ref().map_or(0, |b| b.2);
    if summary.data_bytes + summary.zero_bytes == 0 && summary.target_size == base_size {
        op.warnings.push(Warning {
            code: warnings::NO_CHANGES_FOUND.into(),
            message: "the target has no changes from the base: the object lists none".into(),
            data: Vec::new(),
        });
    }
    if plan.target_size < base_size {
        op.warnings.push(Warning {
            code: warnings::TARGET_SMALLER_THAN_BASE.into(),
            message: "the target is smaller than the base: the disk shrank".into(),
            data: vec![
                WarningData {
                    key: "baseSize".into(),
                    value: base_size.to_string(),
                },
                WarningData {
                    key: "targetSize".into(),
                    value: plan.target_size.to_string(),
                },
            ],
        });
    }
    if replaced {
        op.warnings.push(Warning {
            code: warnings::OBJECT_REPLACED.into(),
            message: format!(
                "an object named {:?} existed in the bucket and was replaced",
                plan.object_name
            ),
            data: Vec::new(),
        });
    }
    op.snapdelta_export = Some(ExportStats {
        bucket_name: plan.bucket_name,
        object_name: plan.object_name,
        output_type: plan.output_type.api_name().into(),
        base_instant_snapshot: plan.base.map(|b| b.0),
        block_size: summary.block_size,
        base_size: summary.base_size,
        target_size: summary.target_size,
        data_extents: summary.data_extents,
        zero_extents: summary.zero_extents,
        data_bytes: summary.data_bytes,
        zero_bytes: summary.zero_bytes,
        bytes_written: summary.bytes_written,
        seconds: summary.seconds,
        encryption_key_sha256: plan.key.as_ref().map(CustomerKey::sha256_base64),
    });
    op.finish();
}

/// Progress of the export mapped onto 0..99: detection takes 0 to 49,
/// writing 50 to 99; 100 is reached only when the operation is done.
fn percent(p: Progress) -> u8 {
    let part = |done: u64, total: u64, span: u64| {
        if total == 0 {
            span
        } else {
            (u128::from(done.min(total)) * u128::from(span) / u128::from(total)) as u64
        }
    };
    match p.phase {
        Phase::Detect => part(p.done, p.total, 49) as u8,
        Phase::Write => (50 + part(p.done, p.total, 49)) as u8,
    }
}

fn parse_request_id(text: &str) -> Checked<uuid::Uuid> {
    // The hyphenated 36-character form only (as the API documents it),
    // its hexadecimal digits in either case.
    let id = (text.len() == 36)
        .then(|| uuid::Uuid::try_parse(text).ok())
        .flatten()
        .ok_or_else(|| {
            refuse(
                codes::INVALID_FIELD_VALUE,
                "requestId",
                format!("{text:?} is not a UUID (8-4-4-4-12 hexadecimal digits)"),
            )
        })?;
    if id.is_nil() {
        return Err(refuse(
            codes::INVALID_FIELD_VALUE,
            "requestId",
            "the zero UUID is not a requestId",
        ));
    }
    Ok(id)
}

/// The checks of `docs/request.md`, in its order; the first broken rule
/// is the answer.
fn check(ctx: &RequestContext<'_>, target_name: &str, body: &[u8]) -> Checked<Plan> {
    let (target, target_meta) = snapshot(ctx, target_name, "instantSnapshot")?;
    if body.len() > MAX_BODY {
        return Err(refuse(
            codes::INVALID_REQUEST_BODY,
            "exportParams",
            format!("the request body is over {MAX_BODY} bytes"),
        ));
    }
    let value = parse_body(body).map_err(|e| match e {
        BodyError::Repeated { location, error } => refuse(
            codes::INVALID_REQUEST_BODY,
            &location,
            format!("the request body gives {location} more than once: {error}"),
        ),
        BodyError::Json(e) => refuse(
            codes::INVALID_REQUEST_BODY,
            "exportParams",
            format!("the request body is not JSON: {e}"),
        ),
    })?;
    let top = object(&value, "request body")?;
    only_fields(top, &["exportParams"], "")?;
    let params = top.get("exportParams").ok_or_else(|| {
        refuse(
            codes::REQUIRED_FIELD_MISSING,
            "exportParams",
            "the request has no exportParams",
        )
    })?;
    let params = object(params, "exportParams")?;
    only_fields(
        params,
        &[
            "baseInstantSnapshot",
            "bucketName",
            "objectName",
            "outputType",
            "encryptionKey",
        ],
        "exportParams.",
    )?;

    let base = match string(params, "baseInstantSnapshot", "exportParams.")? {
        None => None,
        Some(name) => {
            let location = "exportParams.baseInstantSnapshot";
            let (path, meta) = snapshot(ctx, name, location)?;
            if meta.source_disk != target_meta.source_disk {
                return Err(refuse(
                    codes::BASE_FROM_OTHER_DISK,
                    location,
                    format!(
                        "the base {name} is of the disk {:?}, the target {target_name} of {:?}",
                        meta.source_disk, target_meta.source_disk
                    ),
                ));
            }
            let (b, t) = (
                time_of(&meta, location)?,
                time_of(&target_meta, "instantSnapshot")?,
            );
            if b >= t {
                return Err(refuse(
                    codes::BASE_NOT_OLDER,
                    location,
                    format!(
                        "the base {name} ({}) is not older than the target {target_name} ({})",
                        meta.creation_timestamp, target_meta.creation_timestamp
                    ),
                ));
            }
            Some((name.to_string(), path, meta))
        }
    };

    let location = "exportParams.bucketName";
    let bucket_name = string(params, "bucketName", "exportParams.")?.ok_or_else(|| {
        refuse(
            codes::REQUIRED_FIELD_MISSING,
            location,
            "bucketName is required",
        )
    })?;
    if !valid_bucket_name(bucket_name) {
        return Err(refuse(
            codes::INVALID_FIELD_VALUE,
            location,
            format!("{bucket_name:?} is not a bucket name: 3 to 63 lower-case letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
        ));
    }
    let bucket = ctx.buckets.join(bucket_name);
    match bucket.symlink_metadata() {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(refuse(
                codes::INVALID_FIELD_VALUE,
                location,
                format!("the bucket {bucket_name} is not a directory of the bucket root (a symbolic link is not followed)"),
            ))
        }
        Err(_) => {
            return Err(refuse(
                codes::RESOURCE_NOT_FOUND,
                location,
                format!("there is no bucket {bucket_name}"),
            ))
        }
    }

    let location = "exportParams.objectName";
    let object_name = string(params, "objectName", "exportParams.")?.ok_or_else(|| {
        refuse(
            codes::REQUIRED_FIELD_MISSING,
            location,
            "objectName is required",
        )
    })?;
    check_object_name(object_name)?;
    let object = bucket.join(object_name);
    if object.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Err(refuse(
            codes::INVALID_FIELD_VALUE,
            location,
            format!("{object_name:?} is a directory in the bucket"),
        ));
    }

    let location = "exportParams.outputType";
    let ty = string(params, "outputType", "exportParams.")?.ok_or_else(|| {
        refuse(
            codes::REQUIRED_FIELD_MISSING,
            location,
            "outputType is required (METADATA_AND_DATA or METADATA_ONLY)",
        )
    })?;
    let output_type: OutputType = ty.parse().map_err(|e: Error| {
        let message = match e {
            Error::InvalidArgument { message, .. } => message,
            e => e.to_string(),
        };
        refuse(codes::INVALID_FIELD_VALUE, location, message)
    })?;
    // A symbolic link at the object's name (or its map's) is replaced by
    // the rename that names the object, whatever it leads to. A hard link
    // to an image the export reads is that image: refused here, with the
    // snapshot's name rather than its path.
    let mut outputs = vec![(object_name.to_string(), object.clone())];
    if output_type == OutputType::RawSparse {
        outputs.push((format!("{object_name}.map"), map_path(&object)));
    }
    let images =
        std::iter::once((target_name, &target)).chain(base.as_ref().map(|b| (b.0.as_str(), &b.1)));
    for (shown, path) in &outputs {
        for (name, image) in images.clone() {
            if refuse_same_file(path, image).is_err() {
                return Err(refuse(
                    codes::INVALID_FIELD_VALUE,
                    "exportParams.objectName",
                    format!("{shown:?} in the bucket is the image of the snapshot {name} (a hard link to it); choose another objectName"),
                ));
            }
        }
    }

    let key = match params.get("encryptionKey") {
        None => None,
        Some(v) => Some(customer_key(ctx, v)?),
    };
    let location = "exportParams.encryptionKey";
    for (name, meta, at) in [(target_name, &target_meta, "instantSnapshot")]
        .into_iter()
        .chain(
            base.as_ref()
                .map(|b| (b.0.as_str(), &b.2, "baseInstantSnapshot")),
        )
    {
        let Some(wanted) = &meta.encryption_key_sha256 else {
            continue;
        };
        match &key {
            None => {
                return Err(refuse(
                    codes::KEY_REQUIRED,
                    location,
                    format!("the snapshot {name} ({at}) is protected by a customer key: give it in encryptionKey"),
                ))
            }
            Some(k) if k.sha256_base64() != *wanted => {
                return Err(refuse(
                    codes::KEY_MISMATCH,
                    location,
                    format!(
                        "the key given (sha256 {}) is not the key of the snapshot {name} (sha256 {wanted})",
                        k.sha256_base64()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    if key.is_some()
        && !matches!(
            output_type,
            OutputType::MetadataAndData | OutputType::MetadataOnly
        )
    {
        return Err(refuse(
            codes::ENCRYPTION_NOT_SUPPORTED,
            "exportParams.outputType",
            format!(
                "{} cannot be encrypted; with an encryptionKey choose METADATA_AND_DATA or METADATA_ONLY",
                output_type.api_name()
            ),
        ));
    }
    let target_size = std::fs::metadata(&target).map_or(0, |m| m.len());
    Ok(Plan {
        target,
        base: base.map(|(name, path, _)| {
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            (name, path, size)
        }),
        target_size,
        bucket_name: bucket_name.to_string(),
        object_name: object_name.to_string(),
        object,
        output_type,
        key,
    })
}

/// Why a request body is not read.
enum BodyError {
    /// An object of the body has a field twice; `location` names it as
    /// the Operation's error does (`exportParams.objectName`).
    Repeated {
        location: String,
        error: serde_json::Error,
    },
    /// The body is not JSON.
    Json(serde_json::Error),
}

/// Reads a request body as a JSON value, refusing an object that has a
/// field twice, at any depth.
///
/// `serde_json::Value` keeps the last of repeated fields, other readers
/// the first: a request whose validation (by whoever reads it first) and
/// execution can see different values is answered as neither. The
/// snapshot metadata is read into a struct, which refuses repeated
/// fields too.
fn parse_body(body: &[u8]) -> std::result::Result<Value, BodyError> {
    let repeated = std::cell::Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let seed = UniqueFields {
        path: "",
        repeated: &repeated,
    };
    let result = serde::de::DeserializeSeed::deserialize(seed, &mut de).and_then(|v| {
        de.end()?;
        Ok(v)
    });
    result.map_err(|error| match repeated.take() {
        Some(location) => BodyError::Repeated { location, error },
        None => BodyError::Json(error),
    })
}

/// Builds a JSON value like `serde_json::Value`'s own deserializer, but
/// fails on a field given twice in one object, leaving the field's
/// location in `repeated`.
struct UniqueFields<'a> {
    /// Where the value being read is: `""` for the body, then field names
    /// joined by `.` and array indexes in brackets.
    path: &'a str,
    repeated: &'a std::cell::Cell<Option<String>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for UniqueFields<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueFields<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, items.len());
            let seed = UniqueFields {
                path: &path,
                repeated: self.repeated,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Value, A::Error> {
        let mut fields = Map::new();
        // Keys arrive unescaped: `"a"` and `"\u0061"` are one field.
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if fields.contains_key(&key) {
                self.repeated.set(Some(path));
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate field `{key}`"
                )));
            }
            let value = map.next_value_seed(UniqueFields {
                path: &path,
                repeated: self.repeated,
            })?;
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

fn object<'v>(value: &'v Value, what: &str) -> Checked<&'v Map<String, Value>> {
    value.as_object().ok_or_else(|| {
        let location = if what == "request body" {
            "exportParams"
        } else {
            what
        };
        refuse(
            if what == "request body" {
                codes::INVALID_REQUEST_BODY
            } else {
                codes::INVALID_FIELD_VALUE
            },
            location,
            format!("the {what} is not a JSON object"),
        )
    })
}

fn only_fields(map: &Map<String, Value>, known: &[&str], prefix: &str) -> Checked<()> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(refuse(
            codes::UNKNOWN_FIELD,
            &format!("{prefix}{k}"),
            format!("the request has no field {prefix}{k}"),
        )),
        None => Ok(()),
    }
}

fn string<'v>(map: &'v Map<String, Value>, field: &str, prefix: &str) -> Checked<Option<&'v str>> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(refuse(
            codes::INVALID_FIELD_VALUE,
            &format!("{prefix}{field}"),
            format!("{prefix}{field} must be a string"),
        )),
    }
}

/// A snapshot name: 1 to 63 lower-case letters, digits and `-`, starting
/// with a letter and not ending with `-` (the API's resource names).
fn valid_snapshot_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    let end_ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (3..=63).contains(&b.len())
        && end_ok(b[0])
        && end_ok(b[b.len() - 1])
        && b.iter()
            .all(|&c| end_ok(c) || c == b'-' || c == b'_' || c == b'.')
        && !name.contains("..")
}

/// The rules of `objectName`: not empty, under 1024 bytes (and within a
/// file name's limit), one name inside the bucket (no `/`, not `.` or
/// `..`), no NUL or other control characters.
pub fn check_object_name(name: &str) -> std::result::Result<(), Refusal> {
    let location = "exportParams.objectName";
    if name.is_empty() {
        return Err(refuse(
            codes::INVALID_FIELD_VALUE,
            location,
            "objectName is empty",
        ));
    }
    if name.len() >= OBJECT_NAME_LIMIT {
        return Err(refuse(
            codes::FIELD_VALUE_TOO_LONG,
            location,
            format!(
                "objectName is {} bytes; it must be under {OBJECT_NAME_LIMIT}",
                name.len()
            ),
        ));
    }
    if name.starts_with('/') || name == "." || name == ".." || name.split('/').any(|c| c == "..") {
        return Err(refuse(
            codes::OBJECT_NAME_OUTSIDE_BUCKET,
            location,
            format!("objectName {name:?} would leave the bucket"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(refuse(
            codes::INVALID_FIELD_VALUE,
            location,
            format!("objectName {name:?} holds a NUL or another control character"),
        ));
    }
    if name.contains('/') {
        return Err(refuse(
            codes::INVALID_FIELD_VALUE,
            location,
            format!("objectName {name:?} holds '/': an object is one file directly in its bucket"),
        ));
    }
    if name.len() > OBJECT_FILE_NAME_LIMIT {
        return Err(refuse(
            codes::FIELD_VALUE_TOO_LONG,
            location,
            format!(
                "objectName is {} bytes; a bucket's file system takes names of up to {OBJECT_FILE_NAME_LIMIT}",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// Resolves a snapshot by name: its image path and metadata.
fn snapshot(
    ctx: &RequestContext<'_>,
    name: &str,
    location: &str,
) -> Checked<(PathBuf, SnapshotMeta)> {
    if !valid_snapshot_name(name) {
        return Err(refuse(
            codes::INVALID_FIELD_VALUE,
            location,
            format!("{name:?} is not a snapshot name: 1 to 63 lower-case letters, digits and '-', starting with a letter"),
        ));
    }
    let image = ctx.snapshots.join(format!("{name}.img"));
    let meta_path = ctx.snapshots.join(format!("{name}.json"));
    if !image.is_file() || !meta_path.is_file() {
        return Err(refuse(
            codes::RESOURCE_NOT_FOUND,
            location,
            format!("there is no snapshot {name}"),
        ));
    }
    let bad = |m: String| {
        refuse(
            codes::INVALID_SNAPSHOT_METADATA,
            location,
            format!("the metadata of the snapshot {name}: {m}"),
        )
    };
    let mut text = Vec::new();
    File::open(&meta_path)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut text))
        .map_err(|e| bad(e.to_string()))?;
    let meta: SnapshotMeta = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    time_of(&meta, location)?;
    Ok((image, meta))
}

fn time_of(meta: &SnapshotMeta, location: &str) -> Checked<OffsetDateTime> {
    OffsetDateTime::parse(&meta.creation_timestamp, &Rfc3339).map_err(|e| {
        refuse(
            codes::INVALID_SNAPSHOT_METADATA,
            location,
            format!(
                "creationTimestamp {:?} is not RFC 3339: {e}",
                meta.creation_timestamp
            ),
        )
    })
}

/// The key of `encryptionKey`: exactly one kind given.
fn customer_key(ctx: &RequestContext<'_>, value: &Value) -> Checked<CustomerKey> {
    let prefix = "exportParams.encryptionKey.";
    let location = "exportParams.encryptionKey";
    let map = object(value, location)?;
    only_fields(
        map,
        &[
            "rawKey",
            "rsaEncryptedKey",
            "kmsKeyName",
            "kmsKeyServiceAccount",
            "sha256",
        ],
        prefix,
    )?;
    let raw = string(map, "rawKey", prefix)?;
    let rsa = string(map, "rsaEncryptedKey", prefix)?;
    let kms = string(map, "kmsKeyName", prefix)?;
    let account = string(map, "kmsKeyServiceAccount", prefix)?;
    let given = [raw.is_some(), rsa.is_some(), kms.is_some()]
        .iter()
        .filter(|&&g| g)
        .count();
    if given > 1 {
        return Err(refuse(
            codes::CONFLICTING_FIELDS,
            location,
            "give exactly one of rawKey, rsaEncryptedKey and kmsKeyName",
        ));
    }
    if account.is_some() && kms.is_none() {
        return Err(refuse(
            codes::INVALID_FIELD_VALUE,
            "exportParams.encryptionKey.kmsKeyServiceAccount",
            "kmsKeyServiceAccount goes with kmsKeyName",
        ));
    }
    let key = if let Some(raw) = raw {
        CustomerKey::from_base64(raw, "rawKey").map_err(|e| {
            let message = match e {
                Error::InvalidArgument { message, .. } => message,
                e => e.to_string(),
            };
            refuse(
                codes::INVALID_FIELD_VALUE,
                "exportParams.encryptionKey.rawKey",
                message,
            )
        })?
    } else if let Some(rsa) = rsa {
        let at = "exportParams.encryptionKey.rsaEncryptedKey";
        let Some(unwrapper) = ctx.unwrapper else {
            return Err(refuse(
                codes::UNSUPPORTED_FIELD,
                at,
                "rsaEncryptedKey needs the service's private key, which this engine does not hold; give rawKey",
            ));
        };
        let wrapped = base64::engine::general_purpose::STANDARD
            .decode(rsa.trim())
            .map_err(|e| refuse(codes::INVALID_FIELD_VALUE, at, format!("not base64: {e}")))?;
        unwrapper
            .unwrap_rsa(&wrapped)
            .map_err(|m| refuse(codes::INVALID_FIELD_VALUE, at, m))?
    } else if let Some(kms) = kms {
        let at = "exportParams.encryptionKey.kmsKeyName";
        let Some(unwrapper) = ctx.unwrapper else {
            return Err(refuse(
                codes::UNSUPPORTED_FIELD,
                at,
                "kmsKeyName needs a key service, which this engine does not reach; give rawKey",
            ));
        };
        unwrapper
            .unwrap_kms(kms, account)
            .map_err(|m| refuse(codes::INVALID_FIELD_VALUE, at, m))?
    } else {
        return Err(refuse(
            codes::REQUIRED_FIELD_MISSING,
            location,
            "encryptionKey gives none of rawKey, rsaEncryptedKey and kmsKeyName",
        ));
    };
    if let Some(sha) = string(map, "sha256", prefix)? {
        if sha != key.sha256_base64() {
            return Err(refuse(
                codes::KEY_MISMATCH,
                "exportParams.encryptionKey.sha256",
                format!(
                    "sha256 {sha} is not the SHA-256 of the key given ({})",
                    key.sha256_base64()
                ),
            ));
        }
    }
    Ok(key)
}

/// What identifies a request for its requestId: the SHA-256 of the target's
/// name and the body as given (key bytes in it are not kept, only hashed).
fn fingerprint(target: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((target.len() as u64).to_le_bytes());
    h.update(target.as_bytes());
    // A body that is JSON is compared by its value, not its spelling. One
    // that repeats a field has no single value: it counts by its bytes, so
    // that it is not the same request as either of its readings.
    match parse_body(body) {
        Ok(v) => h.update(serde_json::to_vec(&v).expect("a value serializes")),
        Err(_) => h.update(body),
    }
    sha256_base64(&h.finalize().into())
}

/// The record of a requestId.
#[derive(Serialize, Deserialize)]
struct Record {
    fingerprint: String,
    operation: Operation,
}

/// Takes the lock of `id` in `state`, creating the directory (mode 0700)
/// when needed; held until the file is dropped.
fn lock(state: &Path, id: &uuid::Uuid) -> crate::Result<File> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state)
        .map_err(|e| Error::io(state, e))?;
    // The records are only trusted in a directory of our own, not one a
    // symbolic link leads to.
    if !state.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Err(Error::io(
            state,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the requestId record directory is not a directory (a symbolic link?)",
            ),
        ));
    }
    let path = state.join(format!("{id}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::io(&path, e.into()))?;
    Ok(file)
}

fn read_record(path: &Path) -> crate::Result<Option<Record>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut text = Vec::new();
    file.take(4 << 20)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Error::Corrupt {
            what: "requestId record",
            offset: e.column() as u64,
            message: format!("{}: {e}", path.display()),
        })
}

fn write_record(path: &Path, record: &Record) -> crate::Result<()> {
    let mut out = AtomicFile::create(path, true)?;
    let text = serde_json::to_vec_pretty(record).expect("a record serializes");
    out.file_mut()
        .write_all(&text)
        .map_err(|e| Error::io(path, e))?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_rises_through_both_phases() {
        let mut last = 0;
        for (phase, done, total) in [
            (Phase::Detect, 0, 10),
            (Phase::Detect, 5, 10),
            (Phase::Detect, 10, 10),
            (Phase::Write, 0, 4),
            (Phase::Write, 3, 4),
            (Phase::Write, 4, 4),
        ] {
            let p = percent(Progress { phase, done, total });
            assert!(p >= last && p < 100, "{p} after {last}");
            last = p;
        }
        assert_eq!(last, 99);
    }

    #[test]
    fn a_body_reads_as_serde_json_reads_it() {
        for text in [
            r#"{"exportParams": {"objectName": "o", "n": [1, -2, 2.5, true, null, {}, []]}}"#,
            r#""a string""#,
            "[]",
            "18446744073709551615",
        ] {
            let value = parse_body(text.as_bytes()).unwrap_or_else(|_| panic!("{text}"));
            assert_eq!(
                value,
                serde_json::from_str::<Value>(text).unwrap(),
                "{text}"
            );
        }
        for text in ["", "{", "{} {}", r#"{"a": 1,}"#] {
            assert!(
                matches!(parse_body(text.as_bytes()), Err(BodyError::Json(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn a_field_given_twice_is_refused_with_its_location() {
        for (text, location) in [
            (r#"{"a": 1, "a": 1}"#, "a"),
            (r#"{"a": {"b": 1, "c": 2, "b": 3}}"#, "a.b"),
            (r#"{"a": [{"b": 1}, {"c": 1, "c": 2}]}"#, "a[1].c"),
            (r#"{"a": {"b": 1}, "a": {"b": 1}}"#, "a"),
            (r#"{"ab": 1, "a\u0062": 2}"#, "ab"),
        ] {
            match parse_body(text.as_bytes()) {
                Err(BodyError::Repeated { location: l, .. }) => assert_eq!(l, location, "{text}"),
                _ => panic!("{text} read"),
            }
        }
        // Such a body is not the same request as either of its readings.
        let twice = br#"{"a": 1, "a": 2}"#;
        assert_ne!(fingerprint("t", twice), fingerprint("t", br#"{"a": 2}"#));
        assert_ne!(fingerprint("t", twice), fingerprint("t", br#"{"a": 1}"#));
        assert_eq!(
            fingerprint("t", br#"{"a": 1, "b": 2}"#),
            fingerprint("t", br#"{ "b": 2, "a": 1 }"#)
        );
    }

    #[test]
    fn object_names() {
        for ok in ["a", "export.sdx", "x..y", ".hidden"] {
            assert!(check_object_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/x",
            "a/../../x",
            "x\ny",
            "x\0y",
            "a/b",
        ] {
            assert!(check_object_name(bad).is_err(), "{bad:?}");
        }
    }
}
