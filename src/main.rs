//! The `snapdelta` command: parse, call the library, report.
//!
//! Exit codes: 0 done, 1 failed, 2 usage.

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use snapdelta::format::qcow2::{Qcow2Encoder, Qcow2Options};
use snapdelta::format::raw_sparse::map_path;
use snapdelta::format::rbd_diff::RbdDiffEncoder;
use snapdelta::output::{refuse_existing, AtomicFile, StreamingFile};
use snapdelta::{
    apply, export_images, inspect, parse_size, scan, BlockSize, Error, ExportInput, ExportOptions,
    ExtentKind, ExtentListEncoder, Image, OutputType, Phase, Progress, RawSparseEncoder, Sink,
    Source,
};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    Export(ExportArgs),
    /// List the changed extents from BASE to TARGET.
    Diff(DiffArgs),
    /// Rebuild the target from BASE and an export.
    Apply(ApplyArgs),
    /// Decode an export, check it and show what it holds.
    Info(InfoArgs),
}

#[derive(Args)]
struct ExportArgs {
    /// The older image; left out, every non-zero block of TARGET is exported.
    #[arg(long, value_name = "BASE")]
    base: Option<PathBuf>,
    /// The newer image.
    #[arg(value_name = "TARGET")]
    target: PathBuf,
    /// Where to write the export; `-` writes to standard output.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: PathBuf,
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
}

#[derive(Args)]
struct DiffArgs {
    /// The older image; left out, every non-zero block of TARGET is listed.
    #[arg(long, value_name = "BASE")]
    base: Option<PathBuf>,
    /// The newer image.
    #[arg(value_name = "TARGET")]
    target: PathBuf,
    /// Block size of change detection: a power of two from 4K to 2M.
    #[arg(long, value_name = "SIZE", default_value = "4K", value_parser = parse_block_size)]
    block_size: BlockSize,
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
}

#[derive(Args)]
struct InfoArgs {
    /// The export; `-` reads an extent-list stream from standard input.
    #[arg(value_name = "EXPORT")]
    export: PathBuf,
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
        Command::Export(args) => export(args),
        Command::Diff(args) => diff(args),
        Command::Apply(args) => run_apply(args),
        Command::Info(args) => info(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapdelta: error: {e}");
            // Arguments that parse but do not fit together are usage errors.
            let usage = matches!(e, Error::InvalidArgument { .. });
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
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
    let to_stdout = args.output == Path::new("-");
    if to_stdout && !args.output_type.streams() {
        return Err(Error::invalid(
            "output",
            format!(
                "{} needs a seekable file, not standard output",
                args.output_type
            ),
        ));
    }
    if args.compress.is_some()
        && !matches!(
            args.output_type,
            OutputType::MetadataAndData | OutputType::Qcow2
        )
    {
        return Err(Error::invalid(
            "compress",
            format!("{} does not store compressed data", args.output_type),
        ));
    }
    let base = args.base.as_deref().map(Image::open).transpose()?;
    let target = Image::open(&args.target)?;
    if !to_stdout {
        for input in args.base.iter().chain([&args.target]) {
            refuse_same_file(&args.output, input)?;
        }
    }
    if args.digest && args.output_type == OutputType::RbdDiff {
        return Err(Error::invalid(
            "digest",
            "an rbd diff has no place for digests",
        ));
    }
    let options = ExportOptions {
        block_size: args
            .block_size
            .unwrap_or(args.output_type.default_block_size()),
        digests: args.digest
            || (!args.no_digest
                && !matches!(args.output_type, OutputType::Qcow2 | OutputType::RbdDiff)),
    };
    let mut bar = Bar::new();
    let mut progress = |p: Progress| bar.update(p);
    if args.backing.is_some() && args.output_type != OutputType::Qcow2 {
        return Err(Error::invalid(
            "backing",
            "--backing names the backing file of a qcow2 export",
        ));
    }
    let backing = match (&args.backing, &args.base) {
        (Some(name), Some(_)) => Some(name.clone()),
        (Some(_), None) => {
            return Err(Error::invalid(
                "backing",
                "--backing names the base of a qcow2 export: give --base too",
            ))
        }
        (None, Some(base)) if args.output_type == OutputType::Qcow2 => {
            Some(snapdelta::format::qcow2::backing_name(
                base,
                (!to_stdout).then_some(args.output.as_path()),
            )?)
        }
        (None, _) => None,
    };
    if (args.from_snap.is_some() || args.to_snap.is_some())
        && args.output_type != OutputType::RbdDiff
    {
        return Err(Error::invalid(
            "from-snap",
            "--from-snap and --to-snap name the snapshots of an rbd-diff export",
        ));
    }
    let stream_encoder = |out: Box<dyn Write>| -> snapdelta::Result<Box<dyn Sink>> {
        Ok(match args.output_type {
            OutputType::RbdDiff => Box::new(RbdDiffEncoder::new(
                out,
                args.from_snap.clone(),
                args.to_snap.clone(),
            )?),
            OutputType::Qcow2 => Box::new(Qcow2Encoder::new(
                out,
                Qcow2Options {
                    backing: backing.clone(),
                    zstd_level: args.compress,
                },
            )),
            ty => Box::new(ExtentListEncoder::new(
                out,
                ty == OutputType::MetadataAndData,
                args.compress,
            )),
        })
    };
    let summary = if to_stdout {
        let stdout = std::io::stdout().lock();
        let mut encoder = stream_encoder(Box::new(BufWriter::new(stdout)))?;
        export_images(
            base.as_ref(),
            &target,
            encoder.as_mut(),
            &options,
            &mut progress,
        )?
    } else if args.output_type == OutputType::RawSparse {
        let map = map_path(&args.output);
        refuse_existing(&args.output, args.force)?;
        let data_file = AtomicFile::create(&args.output, args.force)?;
        let map_file = AtomicFile::create(&map, args.force)?;
        let data = data_file
            .file()
            .try_clone()
            .map_err(|e| Error::io(&args.output, e))?;
        let map_out = BufWriter::new(
            map_file
                .file()
                .try_clone()
                .map_err(|e| Error::io(&map, e))?,
        );
        let mut encoder = RawSparseEncoder::new(data, &args.output, map_out);
        let summary = export_images(
            base.as_ref(),
            &target,
            &mut encoder,
            &options,
            &mut progress,
        )?;
        drop(encoder);
        // The data file first: a map never names data that is not there.
        // Should the map's rename fail, the new data file goes too.
        data_file.commit()?;
        if let Err(e) = map_file.commit() {
            let _ = std::fs::remove_file(&args.output);
            return Err(e);
        }
        summary
    } else {
        let out = AtomicFile::create(&args.output, args.force)?;
        let file = out
            .file()
            .try_clone()
            .map_err(|e| Error::io(&args.output, e))?;
        let mut encoder = stream_encoder(Box::new(BufWriter::new(StreamingFile::new(file))))?;
        let summary = export_images(
            base.as_ref(),
            &target,
            encoder.as_mut(),
            &options,
            &mut progress,
        )?;
        drop(encoder);
        out.commit()?;
        summary
    };
    bar.done();
    let report = ExportReport {
        output: &args.output,
        output_type: args.output_type.api_name(),
        summary: &summary,
    };
    let text = if args.json {
        serde_json::to_string_pretty(&report).expect("serializable")
    } else {
        format!(
            "{}: {} data extents ({} bytes), {} zero extents ({} bytes); {} bytes written in {:.2} s",
            args.output.display(),
            summary.data_extents,
            summary.data_bytes,
            summary.zero_extents,
            summary.zero_bytes,
            summary.bytes_written,
            summary.seconds
        )
    };
    if to_stdout {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}

/// Refuses an output that is an input under another name: the export
/// would replace the image it is read from.
fn refuse_same_file(output: &Path, input: &Path) -> snapdelta::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(o), Ok(i)) = (std::fs::metadata(output), std::fs::metadata(input)) else {
        return Ok(());
    };
    if (o.dev(), o.ino()) == (i.dev(), i.ino()) {
        return Err(Error::invalid(
            "output",
            format!(
                "{} is the input {}; choose another output",
                output.display(),
                input.display()
            ),
        ));
    }
    Ok(())
}

fn diff(args: DiffArgs) -> snapdelta::Result<()> {
    let base = args.base.as_deref().map(Image::open).transpose()?;
    let target = Image::open(&args.target)?;
    let mut bar = Bar::new();
    let total = target.size();
    let base = base
        .as_ref()
        .map_or_else(|| Source::from_bytes(&[]), Image::source);
    let (map, _) = scan(
        &base,
        &target.source(),
        args.block_size,
        false,
        &mut |done| {
            bar.update(Progress {
                phase: Phase::Detect,
                done,
                total,
            })
        },
    )?;
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
    let mut bar = Bar::new();
    let summary = apply(
        args.base.as_deref(),
        &ExportInput::from_arg(&args.export),
        &args.output,
        args.force,
        &mut |p| bar.update(p),
    )?;
    bar.done();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("serializable")
        );
    } else {
        println!(
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
        );
    }
    Ok(())
}

fn info(args: InfoArgs) -> snapdelta::Result<()> {
    let info = inspect(&ExportInput::from_arg(&args.export))?;
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
