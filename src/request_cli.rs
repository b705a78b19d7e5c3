//! `snapdelta export --request FILE`: the API's export request, answered
//! with an Operation on standard output.

use crate::ExportArgs;
use clap::{Args, ValueEnum};
use snapdelta::operation::Operation;
use snapdelta::request::{export_request, RequestContext, MAX_BODY};
use snapdelta::Error;
use std::io::{Read, Write};
use std::path::PathBuf;

/// How `--progress` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProgressFormat {
    /// One Operation JSON object a line on standard output as the export
    /// runs; the last line is the answer.
    Json,
}

/// The flags of the request path of `export`.
#[derive(Args)]
pub struct RequestArgs {
    /// Run the API's export request in FILE (its JSON body, with
    /// `exportParams`); TARGET is then the target snapshot's name. The
    /// answer is an Operation, printed as JSON.
    #[arg(long, value_name = "FILE", requires_all = ["snapshots", "buckets"],
          conflicts_with_all = ["base", "output", "output_type", "block_size", "backing", "compress", "digest",
                                "no_digest", "from_snap", "to_snap", "json", "force", "key_file"])]
    pub request: Option<PathBuf>,
    /// The snapshot directory: snapshot NAME is NAME.img with NAME.json.
    #[arg(long, value_name = "DIR", requires = "request")]
    pub snapshots: Option<PathBuf>,
    /// The bucket root: each bucket is a directory in it.
    #[arg(long, value_name = "DIR", requires = "request")]
    pub buckets: Option<PathBuf>,
    /// The request's requestId (a UUID): a repeated request with the same
    /// id gets the first answer without a second export.
    #[arg(long, value_name = "UUID", requires = "request")]
    pub request_id: Option<String>,
    /// Where requestId records are kept (default: .snapdelta-requests in
    /// the bucket root).
    #[arg(long, value_name = "DIR", requires = "request")]
    pub state_dir: Option<PathBuf>,
    /// Print Operation updates as the export runs.
    #[arg(long, value_name = "FORMAT", requires = "request")]
    pub progress: Option<ProgressFormat>,
}

/// Runs the request; exits 1 when the Operation carries an error.
pub fn export(args: ExportArgs) -> snapdelta::Result<()> {
    let r = &args.request;
    let path = r.request.as_deref().expect("checked by the caller");
    let mut body = Vec::new();
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    (&mut file)
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| Error::io(path, e))?;
    let target = args.target.to_string_lossy();
    let ctx = RequestContext {
        snapshots: r.snapshots.as_deref().expect("required with --request"),
        buckets: r.buckets.as_deref().expect("required with --request"),
        state_dir: r.state_dir.as_deref(),
        unwrapper: None,
    };
    let lines = r.progress == Some(ProgressFormat::Json);
    let mut out = std::io::stdout().lock();
    let mut failed_write = None;
    let mut print = |op: &Operation, out: &mut std::io::StdoutLock| {
        let text = serde_json::to_string(op).expect("an Operation serializes");
        if let Err(e) = writeln!(out, "{text}").and_then(|_| out.flush()) {
            failed_write.get_or_insert(e);
        }
    };
    let answer = export_request(&ctx, &target, r.request_id.as_deref(), &body, &mut |op| {
        if lines && op.status != snapdelta::operation::Status::Done {
            print(op, &mut out);
        }
    });
    if lines {
        print(&answer, &mut out);
    } else {
        let text = serde_json::to_string_pretty(&answer).expect("an Operation serializes");
        if let Err(e) = writeln!(out, "{text}").and_then(|_| out.flush()) {
            failed_write.get_or_insert(e);
        }
    }
    if let Some(e) = failed_write {
        return Err(Error::io("-", e));
    }
    if let Some(err) = answer.error.as_ref().and_then(|e| e.errors.first()) {
        let _ = writeln!(
            std::io::stderr(),
            "snapdelta: error: {} at {}: {}",
            err.code,
            err.location,
            err.message
        );
        std::process::exit(1);
    }
    Ok(())
}
