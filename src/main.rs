//! The `snapdelta` command: parse, call the library, report.
//!
//! Exit codes: 0 done, 1 failed, 2 usage.

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use snapdelta::detect::scan_blocks;
use snapdelta::format::qcow2::{Qcow2Encoder, Qcow2Options};
use snapdelta::format::raw_sparse::map_path;
use snapdelta::format::rbd_diff::RbdDiffEncoder;
use snapdelta::manifest::{inspect_manifest, ManifestInfo, MAGIC as MANIFEST_MAGIC};
use snapdelta::output::{refuse_existing, AtomicFile, StreamingFile};
use snapdelta::{
    apply, export_images, export_with_manifest, export_writing_manifest, inspect, parse_size, scan,
    verify_image, write_manifest, BlockSize, Error, ExportInput, ExportOptions, ExtentKind,
    ExtentListEncoder, Image, ManifestHeader, ManifestReader, ManifestWriter, OutputType, Phase,
    Progress, RawSparseEncoder, Sink, Source,
};
use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Read, Write};
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
        Command::Manifest(args) => manifest(args),
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
    let mut manifest = args
        .base_manifest
        .as_deref()
        .map(open_manifest)
        .transpose()?;
    let inputs: Vec<&PathBuf> = args
        .base
        .iter()
        .chain(&args.base_manifest)
        .chain([&args.target])
        .collect();
    if !to_stdout {
        for input in &inputs {
            refuse_same_file(&args.output, input)?;
        }
    }
    if let Some(out) = &args.manifest_out {
        for other in inputs
            .iter()
            .copied()
            .chain((!to_stdout).then_some(&args.output))
        {
            refuse_same_file(out, other)?;
            if out == other {
                return Err(Error::invalid(
                    "manifest-out",
                    format!("{} is also an input or the output", out.display()),
                ));
            }
        }
    }
    if args.digest && args.output_type == OutputType::RbdDiff {
        return Err(Error::invalid(
            "digest",
            "an rbd diff has no place for digests",
        ));
    }
    let options = ExportOptions {
        block_size: match (args.block_size, &manifest) {
            (Some(bs), _) => bs,
            (None, Some(m)) => m.header().block_size,
            (None, None) => args.output_type.default_block_size(),
        },
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
        (Some(name), _) if manifest.is_some() => Some(name.clone()),
        (None, None) if manifest.is_some() && args.output_type == OutputType::Qcow2 => {
            return Err(Error::invalid(
                "backing",
                "a qcow2 export made from a manifest needs --backing NAME, the base's file name",
            ))
        }
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
    let manifest_file = args
        .manifest_out
        .as_deref()
        .map(|p| AtomicFile::create(p, args.force))
        .transpose()?;
    let mut manifest_writer = match (&manifest_file, &args.manifest_out) {
        (Some(f), Some(path)) => Some(ManifestWriter::new(
            BufWriter::new(f.file().try_clone().map_err(|e| Error::io(path, e))?),
            ManifestHeader {
                block_size: options.block_size,
                image_size: target.size(),
            },
        )?),
        _ => None,
    };
    let mut run = |sink: &mut dyn Sink| match (&mut manifest, &mut manifest_writer) {
        (Some(m), out) => {
            export_with_manifest(m, &target, sink, &options, out.as_mut(), &mut progress)
        }
        (None, Some(out)) => {
            export_writing_manifest(base.as_ref(), &target, sink, &options, out, &mut progress)
        }
        (None, None) => export_images(base.as_ref(), &target, sink, &options, &mut progress),
    };
    let summary = if to_stdout {
        let stdout = std::io::stdout().lock();
        let mut encoder = stream_encoder(Box::new(BufWriter::new(stdout)))?;
        run(encoder.as_mut())?
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
        let summary = run(&mut encoder)?;
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
        let summary = run(encoder.as_mut())?;
        drop(encoder);
        out.commit()?;
        summary
    };
    drop(manifest_writer);
    if let Some(f) = manifest_file {
        f.commit()?;
    }
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
    if args.export != Path::new("-") && is_manifest(&args.export)? {
        return manifest_info(&args);
    }
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

/// Opens a block manifest and reads its header.
fn open_manifest(path: &Path) -> snapdelta::Result<ManifestReader<BufReader<File>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ManifestReader::new(BufReader::with_capacity(1 << 20, file)).map_err(|e| match e {
        Error::Corrupt {
            what,
            offset,
            message,
        } => Error::Corrupt {
            what,
            offset,
            message: format!("{message} (in {})", path.display()),
        },
        e => e,
    })
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
    println!("{text}");
    Ok(())
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
    if to_stdout {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}
