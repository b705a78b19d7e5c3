//! The qcow2 overlay writer.
//!
//! The whole layout is planned from the change map in [`Sink::begin`],
//! before the first byte is written, so the image goes out front to back
//! to any `io::Write`:
//!
//! ```text
//! cluster 0          header, extensions, backing file name
//! refcount table     one entry per refcount block
//! refcount blocks    16-bit refcounts for every cluster of the file
//! L1 table           one entry per L2 table's worth of guest clusters
//! L2 tables          only those covering a changed cluster
//! data               changed clusters in guest order, packed when compressed
//! ```
//!
//! Data clusters get L2 entries with the COPIED flag; zero clusters are
//! written as the "reads as zero" flag without allocation, so the backing
//! file never shows through them; unchanged clusters stay unallocated and
//! read from the backing file (zeros past its end).

use super::*;
use crate::error::{Error, Result};
use crate::image::Source;
use crate::sink::{DataExtent, ExportHeader, Sink, SinkSummary, ZeroExtent};
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How to write the overlay.
#[derive(Clone, Debug, Default)]
pub struct Qcow2Options {
    /// The backing file name to store (see [`backing_name`]); `None` for an
    /// overlay without a backing file (an export made without a base).
    pub backing: Option<String>,
    /// When set, store each data cluster zstd-compressed at this level
    /// where that makes it smaller.
    pub zstd_level: Option<i32>,
}

/// The refcount width: 16 bits (refcount_order 4).
const REFCOUNT_ORDER: u32 = 4;
const MAX_REFCOUNT: u32 = u16::MAX as u32;
/// How many clusters are compressed at once in the planning and writing
/// passes.
const BATCH: usize = 256;

/// The name to store as the backing file of an overlay written to
/// `overlay`, for the base the user named `base`.
///
/// qemu resolves a relative backing name against the overlay's own
/// directory, so a relative `base` is rewritten relative to that
/// directory; an absolute one is kept. A name qemu would read as a
/// protocol prefix (`ba:se.raw`) gets a `./` in front. A name longer than
/// qemu's 1023 bytes is refused.
pub fn backing_name(base: &Path, overlay: Option<&Path>) -> Result<String> {
    let name: PathBuf = match overlay {
        Some(overlay) if base.is_relative() => {
            // Resolve both directories as the kernel will (symbolic links,
            // `..`), keeping the base's own file name as given.
            let resolve = |dir: &Path| {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))
            };
            let base_dir = resolve(base.parent().unwrap_or(Path::new("")))?;
            let overlay_dir = resolve(overlay.parent().unwrap_or(Path::new("")))?;
            let file = base.file_name().ok_or_else(|| {
                Error::invalid("base", format!("{} names no file", base.display()))
            })?;
            relative_to(&base_dir.join(file), &overlay_dir)
        }
        _ => base.to_path_buf(),
    };
    let mut text = name
        .to_str()
        .ok_or_else(|| Error::invalid("backing", format!("{} is not UTF-8", name.display())))?
        .to_string();
    check_backing_name(&text)?;
    if text
        .split('/')
        .next()
        .is_some_and(|first| first.contains(':'))
    {
        text.insert_str(0, "./");
    }
    check_backing_name(&text)?;
    Ok(text)
}

fn check_backing_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('\0') {
        return Err(Error::invalid(
            "backing",
            "the backing file name is empty or holds a NUL byte",
        ));
    }
    if name.len() > MAX_BACKING_NAME {
        return Err(Error::invalid(
            "backing",
            format!(
                "backing file name too long: {} bytes, qemu reads at most {MAX_BACKING_NAME}",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// `path` relative to the directory `dir`, both absolute and normalized.
fn relative_to(path: &Path, dir: &Path) -> PathBuf {
    let p: Vec<_> = path.components().collect();
    let d: Vec<_> = dir.components().collect();
    let common = p.iter().zip(&d).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..d.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// Where one data cluster goes in the file.
#[derive(Clone, Copy, Debug)]
struct Placed {
    /// Byte offset in the file.
    offset: u64,
    /// Stored length: the cluster size, or the compressed length.
    stored: u32,
    compressed: bool,
}

/// The planned file.
struct Layout {
    cluster_bits: u32,
    cs: u64,
    virtual_size: u64,
    l1_size: u64,
    rt_offset: u64,
    rt_clusters: u64,
    rb_offset: u64,
    rb_clusters: u64,
    l1_offset: u64,
    l1_clusters: u64,
    l2_offset: u64,
    /// L1 indices that get an L2 table, in order.
    l2_tables: Vec<u64>,
    data_offset: u64,
    /// The unchanged last cluster stored as data, see [`tail_cluster`].
    tail: Option<u64>,
    /// Placement of each data cluster in guest order (offsets relative to
    /// `data_offset` until the layout is final).
    placed: Vec<Placed>,
    /// Clusters of the data area.
    data_clusters: u64,
    /// Refcount of each data-area cluster when compressed clusters share
    /// host clusters; empty when every data cluster has refcount 1.
    data_refcounts: Vec<u16>,
    file_size: u64,
}

/// Writes a qcow2 overlay of the changed clusters. It is a [`Sink`]; the
/// block size of the diff becomes the cluster size.
pub struct Qcow2Encoder<W: Write> {
    out: W,
    options: Qcow2Options,
    layout: Option<Layout>,
    written: u64,
    /// Index of the next data cluster to write, in guest order.
    next_data: usize,
    target_size: u64,
    /// The tail cluster's bytes, padded, kept from `begin` for `finish`.
    tail_bytes: Option<Vec<u8>>,
}

impl<W: Write> Qcow2Encoder<W> {
    /// An encoder writing to `out`.
    pub fn new(out: W, options: Qcow2Options) -> Self {
        Qcow2Encoder {
            out,
            options,
            layout: None,
            written: 0,
            next_data: 0,
            target_size: 0,
            tail_bytes: None,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("export output", e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, offset: u64) -> Result<()> {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        assert!(offset >= self.written, "qcow2 layout written out of order");
        while self.written < offset {
            let n = (offset - self.written).min(ZEROS.len() as u64) as usize;
            self.put(&ZEROS[..n])?;
        }
        Ok(())
    }
}

/// One guest cluster's bytes, read from the target and padded with zeros
/// to a whole cluster.
fn cluster_bytes(target: &Source<'_>, offset: u64, cs: u64) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    target.read_clipped(offset, cs, &mut v)?;
    v.resize(cs as usize, 0);
    Ok(v)
}

/// zstd-compresses a cluster; `None` when that does not make it smaller.
fn compress(cluster: &[u8], level: i32) -> Result<Option<Vec<u8>>> {
    let c = zstd::bulk::compress(cluster, level).map_err(|e| Error::io("zstd", e))?;
    Ok((c.len() < cluster.len()).then_some(c))
}

/// The guest offsets of every data cluster, in order: those of the data
/// extents, then the tail cluster when [`tail_cluster`] says so.
fn data_clusters<'a>(h: &'a ExportHeader<'a>, tail: Option<u64>) -> impl Iterator<Item = u64> + 'a {
    let cs = h.block_size.get();
    h.extents
        .iter()
        .filter(|e| e.kind == crate::geometry::ExtentKind::Data)
        .flat_map(move |e| (e.offset..e.end()).step_by(cs as usize))
        .chain(tail)
}

/// The last cluster, when it must be stored although it is unchanged.
///
/// The virtual size is the target's rounded up to 512 bytes. Where the
/// base is longer, an unchanged last cluster would show the base's bytes
/// in that rounding instead of zeros, so it is stored as data: the
/// target's bytes followed by zeros.
fn tail_cluster(h: &ExportHeader<'_>) -> Result<Option<u64>> {
    let cs = h.block_size.get();
    let virtual_size = h.target_size.div_ceil(512) * 512;
    if virtual_size == h.target_size {
        return Ok(None);
    }
    let last = (h.target_size - 1) / cs * cs;
    if h.extents.last().is_some_and(|e| e.end() > last) {
        return Ok(None);
    }
    let mut tail = Vec::new();
    h.base
        .read_clipped(h.target_size, virtual_size - h.target_size, &mut tail)?;
    Ok((!crate::detect::is_zero(&tail)).then_some(last))
}

fn plan(h: &ExportHeader<'_>, level: Option<i32>) -> Result<Layout> {
    let cs = h.block_size.get();
    let cluster_bits = cs.trailing_zeros();
    let virtual_size = h.target_size.div_ceil(512) * 512;
    let l2_entries = cs / 8;
    let guest_clusters = virtual_size.div_ceil(cs);
    let l1_size = guest_clusters.div_ceil(l2_entries);
    if l1_size > (32 << 20) / 8 {
        return Err(Error::Unsupported(format!(
            "a qcow2 image of {virtual_size} bytes in clusters of {cs} needs an L1 table larger \
             than qemu's 32 MiB limit; use a larger block size"
        )));
    }

    // Data area, relative to its start: uncompressed clusters aligned,
    // compressed ones packed byte by byte.
    let tail = tail_cluster(h)?;
    let offsets: Vec<u64> = data_clusters(h, tail).collect();
    let mut placed = Vec::with_capacity(offsets.len());
    let mut refcounts: Vec<u16> = Vec::new();
    let mut cursor = 0u64;
    for batch in offsets.chunks(BATCH) {
        let sizes: Vec<Option<u32>> = match level {
            None => vec![None; batch.len()],
            Some(level) => batch
                .par_iter()
                .map(|&o| {
                    compress(&cluster_bytes(h.target, o, cs)?, level)
                        .map(|c| c.map(|c| c.len() as u32))
                })
                .collect::<Result<_>>()?,
        };
        if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
            h.target.release(*first, last + cs);
        }
        for size in sizes {
            match size {
                None => {
                    cursor = cursor.div_ceil(cs) * cs;
                    placed.push(Placed {
                        offset: cursor,
                        stored: cs as u32,
                        compressed: false,
                    });
                    if level.is_some() {
                        refcounts.push(1);
                    }
                    cursor += cs;
                }
                Some(len) => {
                    let first = cursor / cs;
                    if refcounts
                        .get(first as usize)
                        .is_some_and(|&r| u32::from(r) >= MAX_REFCOUNT)
                    {
                        cursor = (first + 1) * cs;
                    }
                    let first = cursor / cs;
                    let last = (cursor + u64::from(len) - 1) / cs;
                    if refcounts.len() <= last as usize {
                        refcounts.resize(last as usize + 1, 0);
                    }
                    for r in &mut refcounts[first as usize..=last as usize] {
                        *r += 1;
                    }
                    placed.push(Placed {
                        offset: cursor,
                        stored: len,
                        compressed: true,
                    });
                    cursor += u64::from(len);
                }
            }
        }
    }
    let data_clusters = cursor.div_ceil(cs);
    refcounts.resize(
        if level.is_some() {
            data_clusters as usize
        } else {
            0
        },
        0,
    );

    // L2 tables for every L1 index with a changed or tail cluster.
    let mut l2_tables: Vec<u64> = Vec::new();
    let spans = h
        .extents
        .iter()
        .map(|e| (e.offset, e.end()))
        .chain(tail.map(|t| (t, t + 1)));
    for (start, end) in spans {
        let first = start / cs / l2_entries;
        let last = (end - 1) / cs / l2_entries;
        for i in first..=last {
            if l2_tables.last() != Some(&i) {
                l2_tables.push(i);
            }
        }
    }
    let l1_clusters = (l1_size * 8).div_ceil(cs);

    // Refcount blocks must count themselves and the table: iterate to a
    // fixed point.
    let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
    let fixed = 1 + l1_clusters + l2_tables.len() as u64 + data_clusters;
    let (mut rt_clusters, mut rb_clusters) = (1u64, 1u64);
    loop {
        let total = fixed + rt_clusters + rb_clusters;
        let rb = total.div_ceil(per_block);
        let rt = (rb * 8).div_ceil(cs);
        if (rt, rb) == (rt_clusters, rb_clusters) {
            break;
        }
        (rt_clusters, rb_clusters) = (rt.max(1), rb.max(1));
    }
    let rt_offset = cs;
    let rb_offset = rt_offset + rt_clusters * cs;
    let l1_offset = rb_offset + rb_clusters * cs;
    let l2_offset = l1_offset + l1_clusters * cs;
    let data_offset = l2_offset + l2_tables.len() as u64 * cs;
    for p in &mut placed {
        p.offset += data_offset;
    }
    let file_size = data_offset + data_clusters * cs;
    Ok(Layout {
        cluster_bits,
        cs,
        virtual_size,
        l1_size,
        rt_offset,
        rt_clusters,
        rb_offset,
        rb_clusters,
        l1_offset,
        l1_clusters,
        l2_offset,
        l2_tables,
        data_offset,
        tail,
        placed,
        data_clusters,
        data_refcounts: refcounts,
        file_size,
    })
}

impl Layout {
    /// The L2 entry of a compressed or standard data cluster.
    fn data_entry(&self, p: &Placed) -> u64 {
        if p.compressed {
            let x = 62 - (self.cluster_bits - 8);
            let sectors = (p.offset + u64::from(p.stored) - 1) / 512 - p.offset / 512;
            COMPRESSED | (sectors << x) | p.offset
        } else {
            COPIED | p.offset
        }
    }

    /// Refcount of host cluster `index`.
    fn refcount(&self, index: u64) -> u16 {
        let data_first = self.data_offset / self.cs;
        if index < data_first {
            1
        } else if index - data_first >= self.data_clusters {
            0
        } else if self.data_refcounts.is_empty() {
            1
        } else {
            self.data_refcounts[(index - data_first) as usize]
        }
    }
}

fn header_cluster(l: &Layout, h: &ExportHeader<'_>, options: &Qcow2Options) -> Result<Vec<u8>> {
    let mut c = vec![0u8; l.cs as usize];
    let zstd = options.zstd_level.is_some();
    let header_len: usize = if zstd { 112 } else { 104 };
    let put32 = |c: &mut [u8], at: usize, v: u32| c[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |c: &mut [u8], at: usize, v: u64| c[at..at + 8].copy_from_slice(&v.to_be_bytes());
    put32(&mut c, 0, MAGIC);
    put32(&mut c, 4, 3);
    put32(&mut c, 20, l.cluster_bits);
    put64(&mut c, 24, l.virtual_size);
    put32(&mut c, 36, l.l1_size as u32);
    put64(&mut c, 40, l.l1_offset);
    put64(&mut c, 48, l.rt_offset);
    put32(&mut c, 56, l.rt_clusters as u32);
    put64(&mut c, 72, if zstd { INCOMPAT_COMPRESSION } else { 0 });
    put64(&mut c, 88, AUTOCLEAR_RECORD);
    put32(&mut c, 96, REFCOUNT_ORDER);
    put32(&mut c, 100, header_len as u32);
    if zstd {
        c[104] = COMPRESSION_ZSTD;
    }

    // Header extensions, each padded to 8 bytes, then the end marker.
    let mut at = header_len;
    let mut extension = |c: &mut Vec<u8>, kind: u32, data: &[u8]| {
        put32(c, at, kind);
        put32(c, at + 4, data.len() as u32);
        c[at + 8..at + 8 + data.len()].copy_from_slice(data);
        at += 8 + data.len().div_ceil(8) * 8;
    };
    if options.backing.is_some() {
        extension(&mut c, EXT_BACKING_FORMAT, b"raw");
    }
    let record = ExportRecord {
        target_size: h.target_size,
        base_size: h.base_size,
        base_digest: h.base_digest,
        target_digest: h.target_digest,
    };
    extension(&mut c, EXT_SNAPDELTA, &record.encode());
    at += 8; // end marker: type 0, length 0

    if let Some(name) = &options.backing {
        check_backing_name(name)?;
        if at + name.len() > c.len() {
            return Err(Error::invalid(
                "backing",
                "backing file name too long: it must fit in the first cluster",
            ));
        }
        put64(&mut c, 8, at as u64);
        put32(&mut c, 16, name.len() as u32);
        c[at..at + name.len()].copy_from_slice(name.as_bytes());
    }
    Ok(c)
}

impl<W: Write> Sink for Qcow2Encoder<W> {
    fn begin(&mut self, h: &ExportHeader) -> Result<()> {
        if h.base_size > 0 && self.options.backing.is_none() {
            return Err(Error::invalid(
                "backing",
                "a qcow2 export made against a base needs the base's name as its backing file",
            ));
        }
        let l = plan(h, self.options.zstd_level)?;
        self.target_size = h.target_size;
        let first = header_cluster(&l, h, &self.options)?;
        self.put(&first)?;

        // Refcount table, then the refcount blocks it points to.
        let mut table = vec![0u8; (l.rt_clusters * l.cs) as usize];
        for i in 0..l.rb_clusters {
            let at = (i * 8) as usize;
            table[at..at + 8].copy_from_slice(&(l.rb_offset + i * l.cs).to_be_bytes());
        }
        self.put(&table)?;
        let per_block = l.cs / 2;
        let mut block = vec![0u8; l.cs as usize];
        for b in 0..l.rb_clusters {
            for (j, slot) in block.chunks_exact_mut(2).enumerate() {
                let index = b * per_block + j as u64;
                slot.copy_from_slice(&l.refcount(index).to_be_bytes());
            }
            self.put(&block)?;
        }

        // L1 table.
        let mut l1 = vec![0u8; (l.l1_clusters * l.cs) as usize];
        for (n, &i) in l.l2_tables.iter().enumerate() {
            let at = (i * 8) as usize;
            let entry = COPIED | (l.l2_offset + n as u64 * l.cs);
            l1[at..at + 8].copy_from_slice(&entry.to_be_bytes());
        }
        self.put(&l1)?;

        // L2 tables, filled from the extents in guest order.
        let l2_entries = l.cs / 8;
        let mut data_index = 0usize;
        let mut extents = h.extents.iter().peekable();
        let mut l2 = vec![0u8; l.cs as usize];
        for &i in &l.l2_tables {
            l2.fill(0);
            let span_start = i * l2_entries * l.cs;
            let span_end = span_start + l2_entries * l.cs;
            while let Some(e) = extents.peek() {
                if e.offset >= span_end {
                    break;
                }
                let from = e.offset.max(span_start);
                let to = e.end().min(span_end);
                for guest in (from..to).step_by(l.cs as usize) {
                    let entry = match e.kind {
                        crate::geometry::ExtentKind::Zero => ZERO,
                        crate::geometry::ExtentKind::Data => {
                            let entry = l.data_entry(&l.placed[data_index]);
                            data_index += 1;
                            entry
                        }
                    };
                    let at = ((guest / l.cs - i * l2_entries) * 8) as usize;
                    l2[at..at + 8].copy_from_slice(&entry.to_be_bytes());
                }
                if e.end() > span_end {
                    break;
                }
                extents.next();
            }
            if let Some(t) = l.tail.filter(|&t| t >= span_start && t < span_end) {
                let at = ((t / l.cs - i * l2_entries) * 8) as usize;
                let entry = l.data_entry(&l.placed[l.placed.len() - 1]);
                l2[at..at + 8].copy_from_slice(&entry.to_be_bytes());
            }
            self.put(&l2)?;
        }
        debug_assert_eq!(self.written, l.data_offset);
        self.tail_bytes = l
            .tail
            .map(|t| cluster_bytes(h.target, t, l.cs))
            .transpose()?;
        self.layout = Some(l);
        Ok(())
    }

    fn data(&mut self, extent: &DataExtent<'_>) -> Result<()> {
        let l = self.layout.take().expect("begin called first");
        let level = self.options.zstd_level;
        let result = (|| {
            let cs = l.cs;
            let end = extent.offset + extent.bytes.len() as u64;
            if level.is_none() {
                // Uncompressed clusters lie back to back in guest order:
                // write the piece as it is, padding only a short last
                // cluster.
                let count = (extent.bytes.len() as u64).div_ceil(cs) as usize;
                let first = l.placed[self.next_data];
                self.pad_to(first.offset)?;
                self.put(extent.bytes)?;
                self.next_data += count;
                let last = l.placed[self.next_data - 1];
                self.pad_to(last.offset + cs)?;
                return Ok(());
            }
            let guests: Vec<u64> = (extent.offset..end).step_by(cs as usize).collect();
            for batch in guests.chunks(BATCH) {
                let stored: Vec<Vec<u8>> = batch
                    .par_iter()
                    .map(|&g| {
                        let local = g - extent.offset;
                        let len = (end - g).min(cs) as usize;
                        let bytes = &extent.bytes[local as usize..local as usize + len];
                        let mut cluster = bytes.to_vec();
                        cluster.resize(cs as usize, 0);
                        match level {
                            Some(level) => Ok(compress(&cluster, level)?.unwrap_or(cluster)),
                            None => Ok(cluster),
                        }
                    })
                    .collect::<Result<_>>()?;
                for bytes in stored {
                    let p = l.placed[self.next_data];
                    if bytes.len() != p.stored as usize {
                        return Err(Error::Mismatch(format!(
                            "cluster at {} compressed to {} bytes, planned {}: the target changed during the export",
                            extent.offset,
                            bytes.len(),
                            p.stored
                        )));
                    }
                    self.pad_to(p.offset)?;
                    self.put(&bytes)?;
                    self.next_data += 1;
                }
            }
            Ok(())
        })();
        self.layout = Some(l);
        result
    }

    fn zero(&mut self, _extent: &ZeroExtent) -> Result<()> {
        // Zero clusters live in the L2 tables only.
        Ok(())
    }

    fn finish(&mut self) -> Result<SinkSummary> {
        let l = self.layout.take().expect("begin called first");
        if let (Some(t), Some(target)) = (l.tail, self.tail_bytes.take()) {
            let p = l.placed[self.next_data];
            let stored = match self.options.zstd_level {
                Some(level) if p.compressed => compress(&target, level)?.unwrap_or(target),
                _ => target,
            };
            if stored.len() != p.stored as usize {
                return Err(Error::Mismatch(format!(
                    "cluster at {t} compressed to {} bytes, planned {}: the target changed during the export",
                    stored.len(),
                    p.stored
                )));
            }
            self.pad_to(p.offset)?;
            self.put(&stored)?;
            self.next_data += 1;
        }
        assert_eq!(self.next_data, l.placed.len(), "every data cluster written");
        self.pad_to(l.file_size)?;
        self.out
            .flush()
            .map_err(|e| Error::io("export output", e))?;
        Ok(SinkSummary {
            bytes_written: self.written,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub/deep")).unwrap();
        std::fs::create_dir_all(d.join("base dir")).unwrap();
        std::os::unix::fs::symlink(d.join("sub/deep"), d.join("link")).unwrap();
        let p = |s: &str| d.join(s);
        let rel = |base: &str, overlay: &str| {
            let cwd = std::env::current_dir().unwrap();
            let base = pathdiff(&p(base), &cwd);
            let overlay = pathdiff(&p(overlay), &cwd);
            backing_name(&base, Some(&overlay)).unwrap()
        };
        assert_eq!(
            backing_name(Path::new("/abs/b.raw"), Some(Path::new("o.qcow2"))).unwrap(),
            "/abs/b.raw"
        );
        assert_eq!(rel("b.raw", "o.qcow2"), "b.raw");
        assert_eq!(rel("b.raw", "sub/o.qcow2"), "../b.raw");
        assert_eq!(rel("b.raw", "link/o.qcow2"), "../../b.raw");
        assert_eq!(
            rel("base dir/ba:se,x.raw", "base dir/o1.qcow2"),
            "./ba:se,x.raw"
        );
        assert_eq!(backing_name(Path::new("ba:se"), None).unwrap(), "./ba:se");
        assert_eq!(backing_name(Path::new("d/x:y"), None).unwrap(), "d/x:y");
        let long = "a".repeat(1024);
        assert!(backing_name(Path::new(&long), None)
            .unwrap_err()
            .to_string()
            .contains("too long"));
        assert!(backing_name(Path::new(&"a".repeat(1023)), None).is_ok());
    }

    /// `path` relative to `dir`, textually (both absolute).
    fn pathdiff(path: &Path, dir: &Path) -> PathBuf {
        relative_to(path, dir)
    }
}
