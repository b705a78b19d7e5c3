//! The `snapdelta` command: parse, call the library, report.
//!
//! Exit codes: 0 done, 1 failed, 2 usage.

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use snapdelta::detect::scan_blocks;
use snapdelta::format::raw_sparse::map_path;
use snapdelta::job::{refuse_same_file, run_export, ExportJob};
use snapdelta::manifest::{inspect_manifest, open_manifest, ManifestInfo, MAGIC as MANIFEST_MAGIC};
use snapdelta::output::AtomicFile;
use snapdelta::{
    apply_with_key, inspect_with_key, parse_size, scan, verify_image, write_manifest, BlockSize,
    CustomerKey, Error, ExportInput, ExtentKind, Image, OutputType, Phase, Progress, Source,
};
use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod request_cli;
use request_cli as request;

/// Changed-block diff and export of raw snapshot images.
#[derive(Parser)]
#[command(name = "snapdelta", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Export the blocks that changed from BASE to TARGET.
    Export(Box<ExportArgs>),
    /// List the changed extents from BASE to TARGET.
    Diff(DiffArgs),
    /// Rebuild the target from BASE and an export.
    Apply(ApplyArgs),
    /// Decode an export or a block manifest, check it and show what it holds.
    Info(InfoArgs),
    /// Write the block manifest of IMAGE: what an export needs of a base
    /// (see export --base-manifest).
    Manifest(ManifestArgs),
}

#[derive(Args)]
struct ManifestArgs {
    /// The image.
    #[arg(value_name = "IMAGE")]
    image: PathBuf,
    /// Where to write the manifest; `-` writes to standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// Block size: a power of two from 4K to 2M; exports made from the
    /// manifest use it. 64K costs 36 bytes per 64 KiB of data (576 MiB
    /// per TiB) and hashes faster; 4K makes smaller exports but costs 16
    /// times as much.
    #[arg(long, value_name = "SIZE", default_value = "64K", value_parser = parse_block_size)]
    block_size: BlockSize,
    /// Replace an existing output.
    #[arg(long)]
    force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExportArgs {
    /// The older image; left out, every non-zero block of TARGET is exported.
    #[arg(long, value_name = "BASE")]
    base: Option<PathBuf>,
    /// The block manifest of the older image (see `manifest` and
    /// --manifest-out), in place of --base: the export is the same, made
    /// from TARGET alone. Its block size is the export's.
    #[arg(long, value_name = "FILE", conflicts_with = "base")]
    base_manifest: Option<PathBuf>,
    /// Also write TARGET's block manifest to FILE, in the same pass: the
    /// --base-manifest of the next export.
    #[arg(long, value_name = "FILE")]
    manifest_out: Option<PathBuf>,
    /// The newer image.
    #[arg(value_name = "TARGET")]
    target: PathBuf,
    /// Where to write the export; `-` writes to standard output.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "OUT",
        required_unless_present = "request"
    )]
    output: Option<PathBuf>,
    /// metadata-and-data, metadata-only, raw-sparse, qcow2 or rbd-diff (the
    /// API's spellings METADATA_AND_DATA, METADATA_ONLY, ... work too).
    #[arg(long, value_name = "TYPE", default_value = "metadata-and-data", value_parser = parse_output_type)]
    output_type: OutputType,
    /// Block size of change detection (the qcow2 cluster size): a power of
    /// two from 4K to 2M. Default: 64K for qcow2, 4K for the other types.
    #[arg(long, value_name = "SIZE", value_parser = parse_block_size)]
    block_size: Option<BlockSize>,
    /// qcow2 only: the backing file name to store (default: the base's path,
    /// made relative to the output's directory).
    #[arg(long, value_name = "NAME")]
    backing: Option<String>,
    /// Compress data records (metadata-and-data) or clusters (qcow2): zstd
    /// or zstd:LEVEL (1 to 22; default 3).
    #[arg(long, value_name = "zstd[:LEVEL]", value_parser = parse_compress)]
    compress: Option<i32>,
    /// Record the image digests of base and target, so that apply refuses
    /// the wrong base before writing and checks the rebuilt image: the
    /// default for metadata-and-data, metadata-only and raw-sparse; with
    /// qcow2, kept in a header extension only snapdelta reads. Costs hashing
    /// every stored byte of both images.
    #[arg(long, conflicts_with = "no_digest")]
    digest: bool,
    /// Record no image digests (see --digest); apply then checks the base
    /// only by its size and, for extent-list streams, where it changed.
    #[arg(long)]
    no_digest: bool,
    /// rbd-diff only: the snapshot the diff starts from.
    #[arg(long, value_name = "NAME")]
    from_snap: Option<String>,
    /// rbd-diff only: the snapshot the diff leads to.
    #[arg(long, value_name = "NAME")]
    to_snap: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Replace an existing output.
    #[arg(long)]
    force: bool,
    /// Encrypt the export (extent-list types) with the AES-256 key whose
    /// base64 text this file holds.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    #[command(flatten)]
    request: request::RequestArgs,
}

#[derive(Args)]
struct DiffArgs {
    /// The older image; left out, every non-zero block of TARGET is listed.
    #[arg(long, value_name = "BASE")]
    base: Option<PathBuf>,
    /// The block manifest of the older image, in place of --base; its
    /// block size is the diff's.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["base", "block_size"])]
    base_manifest: Option<PathBuf>,
    /// The newer image.
    #[arg(value_name = "TARGET")]
    target: PathBuf,
    /// Block size of change detection: a power of two from 4K to 2M
    /// (default 4K).
    #[arg(long, value_name = "SIZE", value_parser = parse_block_size)]
    block_size: Option<BlockSize>,
    /// Print the change map as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ApplyArgs {
    /// The image the export was made against; left out (or an empty
    /// file) for an export made without a base.
    #[arg(long, value_name = "BASE")]
    base: Option<PathBuf>,
    /// Check BASE against this block manifest before writing anything, and
    /// refuse it when it differs.
    #[arg(long, value_name = "FILE")]
    base_manifest: Option<PathBuf>,
    /// The export; `-` reads an extent-list stream from standard input.
    #[arg(value_name = "EXPORT")]
    export: PathBuf,
    /// Where to write the rebuilt image.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: PathBuf,
    /// Replace an existing output.
    #[arg(long)]
    force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// The file holding the base64 key of an encrypted export.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

#[derive(Args)]
struct InfoArgs {
    /// The export; `-` reads an extent-list stream from standard input.
    #[arg(value_name = "EXPORT")]
    export: PathBuf,
    /// The file holding the base64 key of an encrypted export.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_output_type(text: &str) -> Result<OutputType, String> {
    text.parse().map_err(|e: Error| e.to_string())
}

fn parse_block_size(text: &str) -> Result<BlockSize, String> {
    parse_size(text)
        .and_then(BlockSize::new)
        .map_err(|e| e.to_string())
}

fn parse_compress(text: &str) -> Result<i32, String> {
    let level = match text.split_once(':') {
        None if text == "zstd" => return Ok(3),
        Some(("zstd", level)) => level
            .parse::<i32>()
            .map_err(|_| format!("'{level}' is not a zstd level"))?,
        _ => return Err(format!("'{text}' is not zstd or zstd:LEVEL")),
    };
    if !(1..=22).contains(&level) {
        return Err(format!("zstd level {level} is not from 1 to 22"));
    }
    Ok(level)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Export(args) => export(*args),
        Command::Diff(args) => diff(args),
        Command::Apply(args) => run_apply(args),
        Command::Info(args) => info(args),
        Command::Manifest(args) => manifest(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Nothing is left to tell if standard error itself fails.
            let _ = writeln!(std::io::stderr(), "snapdelta: error: {e}");
            // Arguments that parse but do not fit together are usage errors.
            let usage = matches!(e, Error::InvalidArgument { .. });
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// Prints a command's report on standard output, or on standard error
/// when standard output carries the export; a failed write is an error
/// (exit 1), not a panic.
fn say(to_stderr: bool, text: &str) -> snapdelta::Result<()> {
    let written = if to_stderr {
        writeln!(std::io::stderr(), "{text}")
    } else {
        writeln!(std::io::stdout(), "{text}").and_then(|_| std::io::stdout().flush())
    };
    written.map_err(|e| Error::io(if to_stderr { "standard error" } else { "-" }, e))
}

/// A progress bar on stderr when stderr is a terminal; silent otherwise.
struct Bar(Option<(ProgressBar, Option<Phase>)>);

impl Bar {
    fn new() -> Self {
        Bar(std::io::stderr()
            .is_terminal()
            .then(|| (ProgressBar::hidden(), None)))
    }

    fn update(&mut self, p: Progress) {
        let Some((bar, phase)) = &mut self.0 else {
            return;
        };
        if *phase != Some(p.phase) {
            bar.finish_and_clear();
            *bar = ProgressBar::new(p.total).with_style(
                ProgressStyle::with_template(
                    "{msg:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(match p.phase {
                Phase::Detect => "compare",
                Phase::Write => "write",
            });
            *phase = Some(p.phase);
        }
        bar.set_position(p.done);
    }

    fn done(&self) {
        if let Some((bar, _)) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

#[derive(Serialize)]
struct ExportReport<'a> {
    output: &'a Path,
    output_type: &'static str,
    #[serde(flatten)]
    summary: &'a snapdelta::ExportSummary,
}

fn export(args: ExportArgs) -> snapdelta::Result<()> {
    if args.request.request.is_some() {
        return request::export(args);
    }
    let output = args.output.clone().expect("required without --request");
    if let Some(key) = &args.key_file {
        let map = (args.output_type == OutputType::RawSparse).then(|| map_path(&output));
        for out in [
            Some(&output).filter(|o| o.as_path() != Path::new("-")),
            map.as_ref(),
            args.manifest_out.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            refuse_same_file(out, key)?;
        }
    }
    let job = ExportJob {
        base: args.base.clone(),
        target: args.target.clone(),
        output: output.clone(),
        output_type: args.output_type,
        block_size: args.block_size,
        digests: if args.digest {
            Some(true)
        } else if args.no_digest {
            Some(false)
        } else {
            None
        },
        compress: args.compress,
        backing: args.backing.clone(),
        from_snap: args.from_snap.clone(),
        to_snap: args.to_snap.clone(),
        force: args.force,
        key: args
            .key_file
            .as_deref()
            .map(CustomerKey::from_file)
            .transpose()?,
        base_manifest: args.base_manifest.clone(),
        manifest_out: args.manifest_out.clone(),
    };
    let mut bar = Bar::new();
    let summary = run_export(&job, &mut |p| bar.update(p))?;
    bar.done();
    let report = ExportReport {
        output: &output,
        output_type: args.output_type.api_name(),
        summary: &summary,
    };
    let text = if args.json {
        serde_json::to_string_pretty(&report).expect("serializable")
    } else {
        format!(
            "{}: {} data extents ({} bytes), {} zero extents ({} bytes); {} bytes written in {:.2} s",
            output.display(),
            summary.data_extents,
            summary.data_bytes,
            summary.zero_extents,
            summary.zero_bytes,
            summary.bytes_written,
            summary.seconds
        )
    };
    say(output == Path::new("-"), &text)
}

fn diff(args: DiffArgs) -> snapdelta::Result<()> {
    let base = args.base.as_deref().map(Image::open).transpose()?;
    let target = Image::open(&args.target)?;
    let mut bar = Bar::new();
    let total = target.size();
    let base = base
        .as_ref()
        .map_or_else(|| Source::from_bytes(&[]), Image::source);
    let mut progress = |done| {
        bar.update(Progress {
            phase: Phase::Detect,
            done,
            total,
        })
    };
    let map = if let Some(path) = &args.base_manifest {
        let mut manifest = open_manifest(path)?;
        let bs = manifest.header().block_size;
        let scan = scan_blocks::<_, std::io::Sink>(
            &target.source(),
            bs,
            Some(&mut manifest),
            None,
            &mut progress,
        )?;
        manifest.finish()?;
        scan.map
    } else {
        let bs = args.block_size.unwrap_or(BlockSize::new(4096)?);
        scan(&base, &target.source(), bs, false, &mut progress)?.0
    };
    bar.done();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &map)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(out))
    } else {
        (|| {
            writeln!(out, "{:>16} {:>16}  KIND", "OFFSET", "LENGTH")?;
            for e in &map.extents {
                writeln!(out, "{:>16} {:>16}  {}", e.offset, e.length, e.kind)?;
            }
            writeln!(
                out,
                "{} data extents ({} bytes), {} zero extents ({} bytes); block size {}, base {} bytes, target {} bytes",
                map.count(ExtentKind::Data),
                map.bytes(ExtentKind::Data),
                map.count(ExtentKind::Zero),
                map.bytes(ExtentKind::Zero),
                map.block_size,
                map.base_size,
                map.target_size
            )
        })()
    };
    written
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("-", e))
}

fn run_apply(args: ApplyArgs) -> snapdelta::Result<()> {
    if args.output == Path::new("-") {
        return Err(Error::invalid(
            "output",
            "apply writes an image file, not standard output (name a file called - as ./-)",
        ));
    }
    // The output may replace the base (written whole, then renamed over
    // it), never the export (nor a raw sparse export's map), the manifest
    // or the key being read.
    let map = Some(map_path(&args.export)).filter(|m| m.exists());
    for input in [
        Some(&args.export).filter(|e| e.as_path() != Path::new("-")),
        map.as_ref(),
        args.base_manifest.as_ref(),
        args.key_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        refuse_same_file(&args.output, input)?;
    }
    let mut bar = Bar::new();
    if let Some(path) = &args.base_manifest {
        let mut manifest = open_manifest(path)?;
        let base = args.base.as_deref().map(Image::open).transpose()?;
        let source = base
            .as_ref()
            .map_or_else(|| Source::from_bytes(&[]), Image::source);
        let total = source.len();
        verify_image(&source, &mut manifest, &mut |done| {
            bar.update(Progress {
                phase: Phase::Detect,
                done,
                total,
            })
        })
        .map_err(|e| match e {
            Error::Mismatch(m) => Error::Mismatch(format!(
                "{} is not the image {} describes: {m}",
                args.base
                    .as_deref()
                    .unwrap_or(Path::new("the empty base"))
                    .display(),
                path.display()
            )),
            e => e,
        })?;
    }
    let key = args
        .key_file
        .as_deref()
        .map(CustomerKey::from_file)
        .transpose()?;
    let summary = apply_with_key(
        args.base.as_deref(),
        &ExportInput::from_arg(&args.export),
        &args.output,
        args.force,
        key.as_ref(),
        &mut |p| bar.update(p),
    )?;
    bar.done();
    let text = if args.json {
        serde_json::to_string_pretty(&summary).expect("serializable")
    } else {
        format!(
            "{}: {} bytes rebuilt; {} export records applied ({} data bytes, {} zero bytes){}",
            args.output.display(),
            summary.target_size,
            summary.records,
            summary.data_bytes,
            summary.zero_bytes,
            if summary.target_digest_verified {
                "; target digest verified"
            } else {
                ""
            }
        )
    };
    say(false, &text)
}

fn info(args: InfoArgs) -> snapdelta::Result<()> {
    if args.export != Path::new("-") && is_manifest(&args.export)? {
        return manifest_info(&args);
    }
    let key = args
        .key_file
        .as_deref()
        .map(CustomerKey::from_file)
        .transpose()?;
    let info = inspect_with_key(&ExportInput::from_arg(&args.export), key.as_ref())?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &info)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(out))
    } else {
        (|| {
            writeln!(out, "output type:   {}", info.output_type)?;
            writeln!(out, "version:       {}", info.version)?;
            writeln!(out, "block size:    {}", info.block_size)?;
            writeln!(out, "base size:     {}", info.base_size)?;
            writeln!(out, "target size:   {}", info.target_size)?;
            writeln!(
                out,
                "data extents:  {} ({} bytes)",
                info.data_extents, info.data_bytes
            )?;
            writeln!(
                out,
                "zero extents:  {} ({} bytes)",
                info.zero_extents, info.zero_bytes
            )?;
            writeln!(out, "stored bytes:  {}", info.stored_bytes)?;
            writeln!(
                out,
                "base digest:   {}",
                info.base_digest.as_deref().unwrap_or("-")
            )?;
            writeln!(
                out,
                "target digest: {}",
                info.target_digest.as_deref().unwrap_or("-")
            )?;
            if let Some(sha) = &info.encryption_key_sha256 {
                writeln!(out, "key sha256:    {sha}")?;
            }
            writeln!(out, "extents:")?;
            for e in &info.extents {
                writeln!(out, "{} {} {}", e.offset, e.length, e.kind)?;
            }
            Ok(())
        })()
    };
    written
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("-", e))
}

/// Whether `path` starts with the block manifest's magic.
fn is_manifest(path: &Path) -> snapdelta::Result<bool> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    if !file.metadata().map_err(|e| Error::io(path, e))?.is_file() {
        return Ok(false);
    }
    let mut magic = [0u8; 8];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(got == magic.len() && magic == MANIFEST_MAGIC)
}

fn manifest_info(args: &InfoArgs) -> snapdelta::Result<()> {
    let file = File::open(&args.export).map_err(|e| Error::io(&args.export, e))?;
    let info: ManifestInfo = inspect_manifest(BufReader::with_capacity(1 << 20, file))?;
    let text = if args.json {
        serde_json::to_string_pretty(&info).expect("serializable")
    } else {
        format!(
            "kind:          block manifest\nversion:       {}\nblock size:    {}\nimage size:    {}\nblocks:        {} ({} data, {} zero)\nimage digest:  {}",
            info.version,
            info.block_size,
            info.image_size,
            info.blocks,
            info.data_blocks,
            info.zero_blocks,
            info.image_digest
        )
    };
    say(false, &text)
}

#[derive(Serialize)]
struct ManifestReport<'a> {
    output: &'a Path,
    block_size: u64,
    image_size: u64,
    bytes_written: u64,
    seconds: f64,
}

fn manifest(args: ManifestArgs) -> snapdelta::Result<()> {
    let started = std::time::Instant::now();
    let image = Image::open(&args.image)?;
    let to_stdout = args.output == Path::new("-");
    let mut bar = Bar::new();
    let total = image.size();
    let mut progress = |done| {
        bar.update(Progress {
            phase: Phase::Detect,
            done,
            total,
        })
    };
    let written = if to_stdout {
        let stdout = std::io::stdout().lock();
        write_manifest(
            &image.source(),
            args.block_size,
            BufWriter::with_capacity(1 << 20, stdout),
            &mut progress,
        )?
    } else {
        refuse_same_file(&args.output, &args.image)?;
        let out = AtomicFile::create(&args.output, args.force)?;
        let file = out
            .file()
            .try_clone()
            .map_err(|e| Error::io(&args.output, e))?;
        let written = write_manifest(
            &image.source(),
            args.block_size,
            BufWriter::with_capacity(1 << 20, file),
            &mut progress,
        )?;
        out.commit()?;
        written
    };
    bar.done();
    let report = ManifestReport {
        output: &args.output,
        block_size: args.block_size.get(),
        image_size: image.size(),
        bytes_written: written,
        seconds: started.elapsed().as_secs_f64(),
    };
    let text = if args.json {
        serde_json::to_string_pretty(&report).expect("serializable")
    } else {
        format!(
            "{}: manifest of {} bytes in blocks of {}; {} bytes written in {:.2} s",
            args.output.display(),
            report.image_size,
            args.block_size,
            written,
            report.seconds
        )
    };
    say(to_stdout, &text)
}
