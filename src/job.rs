//! A whole export to a file, as the command line and the request path
//! run it: open the images, check the options against the output type,
//! pick the encoder, write under a temporary name (mode 0600) and give the
//! output its name only once it is complete.

use crate::crypt::CustomerKey;
use crate::error::{Error, Result};
use crate::export::{export_images, ExportOptions, ExportSummary, Progress};
use crate::format::qcow2::{backing_name, Qcow2Encoder, Qcow2Options};
use crate::format::raw_sparse::{map_path, RawSparseEncoder};
use crate::format::rbd_diff::RbdDiffEncoder;
use crate::format::OutputType;
use crate::geometry::BlockSize;
use crate::image::Image;
use crate::manifest::{
    export_with_manifest, export_writing_manifest, open_manifest, ManifestHeader, ManifestWriter,
};
use crate::output::{refuse_existing, AtomicFile, StreamingFile};
use crate::sink::Sink;
use crate::ExtentListEncoder;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Everything an export to a file needs.
#[derive(Clone, Debug, Default)]
pub struct ExportJob {
    /// The older image; `None` exports every non-zero block of the target.
    pub base: Option<PathBuf>,
    /// The newer image.
    pub target: PathBuf,
    /// The output; `-` writes a stream type to standard output.
    pub output: PathBuf,
    /// The output type.
    pub output_type: OutputType,
    /// The block size; `None` takes the type's
    /// [`OutputType::default_block_size`].
    pub block_size: Option<BlockSize>,
    /// Image digests: `Some(true)` records them, `Some(false)` does not,
    /// `None` takes the type's default (recorded for the extent-list and
    /// raw sparse types).
    pub digests: Option<bool>,
    /// zstd level for data records (extent-list) or clusters (qcow2).
    pub compress: Option<i32>,
    /// qcow2 only: the backing file name to store (default: the base's
    /// path relative to the output's directory).
    pub backing: Option<String>,
    /// rbd-diff only: the snapshot the diff starts from.
    pub from_snap: Option<String>,
    /// rbd-diff only: the snapshot the diff leads to.
    pub to_snap: Option<String>,
    /// Replace an existing output (a symbolic link there is replaced, not
    /// followed).
    pub force: bool,
    /// Encrypt the export with this key: extent-list types only.
    pub key: Option<CustomerKey>,
    /// Detect changes against this block manifest of the base instead of
    /// the base image (`base` must then be `None`).
    pub base_manifest: Option<PathBuf>,
    /// Also write the target's block manifest here, in the same pass.
    pub manifest_out: Option<PathBuf>,
}

/// Runs `job`, reporting progress; the output appears under its name only
/// if the whole export succeeded.
pub fn run_export(job: &ExportJob, progress: &mut dyn FnMut(Progress)) -> Result<ExportSummary> {
    let ty = job.output_type;
    let to_stdout = job.output == Path::new("-");
    if to_stdout && !ty.streams() {
        return Err(Error::invalid(
            "output",
            format!("{ty} needs a seekable file, not standard output"),
        ));
    }
    if job.compress.is_some() && !matches!(ty, OutputType::MetadataAndData | OutputType::Qcow2) {
        return Err(Error::invalid(
            "compress",
            format!("{ty} does not store compressed data"),
        ));
    }
    if job.key.is_some() && !matches!(ty, OutputType::MetadataAndData | OutputType::MetadataOnly) {
        return Err(Error::invalid(
            "key",
            format!("{ty} cannot be encrypted; only the extent-list types (METADATA_AND_DATA, METADATA_ONLY) can"),
        ));
    }
    if job.base.is_some() && job.base_manifest.is_some() {
        return Err(Error::invalid(
            "base-manifest",
            "give the base image or its manifest, not both",
        ));
    }
    let base = job.base.as_deref().map(Image::open).transpose()?;
    let target = Image::open(&job.target)?;
    let mut manifest = job
        .base_manifest
        .as_deref()
        .map(open_manifest)
        .transpose()?;
    let inputs: Vec<&PathBuf> = job
        .base
        .iter()
        .chain(&job.base_manifest)
        .chain([&job.target])
        .collect();
    if !to_stdout {
        for input in &inputs {
            refuse_same_file(&job.output, input)?;
            // A raw sparse export also writes OUT.map.
            if ty == OutputType::RawSparse {
                refuse_same_file(&map_path(&job.output), input)?;
            }
        }
    } else {
        refuse_stdout_input(&inputs)?;
    }
    if let Some(out) = &job.manifest_out {
        let map = (ty == OutputType::RawSparse).then(|| map_path(&job.output));
        for other in inputs
            .iter()
            .copied()
            .chain((!to_stdout).then_some(&job.output))
            .chain(map.as_ref())
        {
            refuse_same_file(out, other)?;
        }
    }
    if job.digests == Some(true) && ty == OutputType::RbdDiff {
        return Err(Error::invalid(
            "digest",
            "an rbd diff has no place for digests",
        ));
    }
    let options = ExportOptions {
        block_size: match (job.block_size, &manifest) {
            (Some(bs), _) => bs,
            (None, Some(m)) => m.header().block_size,
            (None, None) => ty.default_block_size(),
        },
        digests: job
            .digests
            .unwrap_or(!matches!(ty, OutputType::Qcow2 | OutputType::RbdDiff)),
    };
    if job.backing.is_some() && ty != OutputType::Qcow2 {
        return Err(Error::invalid(
            "backing",
            "--backing names the backing file of a qcow2 export",
        ));
    }
    let backing = match (&job.backing, &job.base) {
        (Some(name), _) if manifest.is_some() => Some(name.clone()),
        (None, None) if manifest.is_some() && ty == OutputType::Qcow2 => {
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
        (None, Some(base)) if ty == OutputType::Qcow2 => Some(backing_name(
            base,
            (!to_stdout).then_some(job.output.as_path()),
        )?),
        (None, _) => None,
    };
    if (job.from_snap.is_some() || job.to_snap.is_some()) && ty != OutputType::RbdDiff {
        return Err(Error::invalid(
            "from-snap",
            "--from-snap and --to-snap name the snapshots of an rbd-diff export",
        ));
    }
    let stream_encoder = |out: Box<dyn Write>| -> Result<Box<dyn Sink>> {
        Ok(match ty {
            OutputType::RbdDiff => Box::new(RbdDiffEncoder::new(
                out,
                job.from_snap.clone(),
                job.to_snap.clone(),
            )?),
            OutputType::Qcow2 => Box::new(Qcow2Encoder::new(
                out,
                Qcow2Options {
                    backing: backing.clone(),
                    zstd_level: job.compress,
                },
            )),
            ty => {
                let encoder =
                    ExtentListEncoder::new(out, ty == OutputType::MetadataAndData, job.compress);
                match &job.key {
                    Some(key) => Box::new(encoder.with_key(key)?),
                    None => Box::new(encoder),
                }
            }
        })
    };
    let manifest_file = job
        .manifest_out
        .as_deref()
        .map(|p| AtomicFile::create(p, job.force))
        .transpose()?;
    let mut manifest_writer = match (&manifest_file, &job.manifest_out) {
        (Some(f), Some(path)) => Some(ManifestWriter::new(
            BufWriter::new(f.file().try_clone().map_err(|e| Error::io(path, e))?),
            ManifestHeader {
                block_size: options.block_size,
                image_size: target.size(),
            },
        )?),
        _ => None,
    };
    let mut run = |sink: &mut dyn Sink| {
        match (&mut manifest, &mut manifest_writer) {
            (Some(m), out) => {
                export_with_manifest(m, &target, sink, &options, out.as_mut(), progress)
            }
            (None, Some(out)) => {
                export_writing_manifest(base.as_ref(), &target, sink, &options, out, progress)
            }
            (None, None) => export_images(base.as_ref(), &target, sink, &options, progress),
        }
        // The encoders know their output only as a writer: name it.
        .map_err(|e| match e {
            Error::Io { path, source } if path == Path::new("export output") => Error::Io {
                path: job.output.clone(),
                source,
            },
            e => e,
        })
    };
    let output = &job.output;
    let summary = if to_stdout {
        let stdout = std::io::stdout().lock();
        let mut encoder = stream_encoder(Box::new(BufWriter::with_capacity(WRITE_BUFFER, stdout)))?;
        run(encoder.as_mut())?
    } else if ty == OutputType::RawSparse {
        let map = map_path(output);
        refuse_existing(output, job.force)?;
        let data_file = AtomicFile::create(output, job.force)?;
        let map_file = AtomicFile::create(&map, job.force)?;
        let data = data_file
            .file()
            .try_clone()
            .map_err(|e| Error::io(output, e))?;
        let map_out = BufWriter::new(
            map_file
                .file()
                .try_clone()
                .map_err(|e| Error::io(&map, e))?,
        );
        let mut encoder = RawSparseEncoder::new(data, output, map_out);
        let summary = run(&mut encoder)?;
        drop(encoder);
        // The data file first: a map never names data that is not there.
        // Should the map's rename fail, the new data file goes too.
        data_file.commit()?;
        if let Err(e) = map_file.commit() {
            let _ = std::fs::remove_file(output);
            return Err(e);
        }
        summary
    } else {
        let out = AtomicFile::create(output, job.force)?;
        let file = out.file().try_clone().map_err(|e| Error::io(output, e))?;
        let mut encoder = stream_encoder(Box::new(BufWriter::with_capacity(
            WRITE_BUFFER,
            StreamingFile::new(file),
        )))?;
        let summary = run(encoder.as_mut())?;
        drop(encoder);
        out.commit()?;
        summary
    };
    drop(manifest_writer);
    if let Some(f) = manifest_file {
        f.commit()?;
    }
    Ok(summary)
}

/// Refuses an output that is an input (or another output) under another
/// name: the command would replace a file it reads or writes. Two paths
/// are one file when they reach the same inode, or, where one of them
/// does not exist yet, when they are the same name in the same directory.
///
/// The output is looked at itself, its final symbolic link not followed:
/// an output takes its name by a rename, which replaces a link there and
/// leaves what it leads to alone, so a link to an input is no danger to
/// it. The input is followed, as it is read. A hard link to an input (or
/// the input's own name) is refused.
pub fn refuse_same_file(output: &Path, input: &Path) -> Result<()> {
    if same_file(output, input) {
        return Err(Error::invalid(
            "output",
            format!(
                "{} and {} are the same file; choose another output",
                output.display(),
                input.display()
            ),
        ));
    }
    Ok(())
}

/// Whether `output` (its final link not followed) and `input` are one
/// file; see [`refuse_same_file`].
fn same_file(output: &Path, input: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (output, input);
    if let (Ok(x), Ok(y)) = (std::fs::symlink_metadata(a), std::fs::metadata(b)) {
        return (x.dev(), x.ino()) == (y.dev(), y.ino());
    }
    // The directory, resolved, and the name in it.
    let place = |p: &Path| {
        let name = p.file_name()?;
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        Some(
            std::fs::canonicalize(dir.unwrap_or(Path::new(".")))
                .ok()?
                .join(name),
        )
    };
    match (place(a), place(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Refuses standard output when it is one of the inputs (`-o - 1<>IMAGE`):
/// the export would overwrite the image it reads.
fn refuse_stdout_input(inputs: &[&PathBuf]) -> Result<()> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(out) = rustix::fs::fstat(std::io::stdout().as_fd()) else {
        return Ok(());
    };
    for input in inputs {
        if let Ok(i) = std::fs::metadata(input) {
            if (out.st_dev, out.st_ino) == (i.dev(), i.ino()) {
                return Err(Error::invalid(
                    "output",
                    format!(
                        "standard output is the input {}; choose another output",
                        input.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Writes to an output go out in pieces of up to this much: the
/// kernel takes a few large writes much faster than many writes of one
/// cluster or one record (measured: 1 GiB in 64 KiB writes costs about
/// half as much again as in 1 MiB writes).
const WRITE_BUFFER: usize = 1 << 20;
