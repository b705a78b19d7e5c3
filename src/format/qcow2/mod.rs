//! qcow2 version 3 overlays: a writer that lays out an overlay of only
//! the changed clusters over the base as a raw backing file, and a reader
//! for such overlays, ours and qemu's. Field names follow qemu's
//! specification `docs/interop/qcow2.rst`; `docs/qcow2.md` says how
//! snapdelta uses the format.

mod reader;
mod writer;

pub use reader::{has_magic, Mapping, Qcow2Reader};
pub use writer::{backing_name, Qcow2Encoder, Qcow2Options};

/// `QFI\xfb`.
const MAGIC: u32 = 0x5146_49fb;
/// Header extension: the backing file's format name.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: snapdelta's own record of the export (true target
/// size, base size, digests). Readers that do not know it ignore it.
const EXT_SNAPDELTA: u32 = 0x7364_7461;
/// Length of the snapdelta extension's data.
const EXT_SNAPDELTA_LEN: usize = 88;
/// Incompatible feature bits.
const INCOMPAT_DIRTY: u64 = 1;
const INCOMPAT_CORRUPT: u64 = 2;
const INCOMPAT_DATA_FILE: u64 = 4;
const INCOMPAT_COMPRESSION: u64 = 8;
const INCOMPAT_EXTL2: u64 = 16;
/// Autoclear feature bit: set by snapdelta to say that the image carries
/// its export record. qemu clears autoclear bits it does not know when it
/// writes an image; a reader finding the bit set but no record knows the
/// header was damaged.
const AUTOCLEAR_RECORD: u64 = 1 << 32;
/// L1 and L2 entry bits.
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// The longest backing file name qemu accepts.
pub const MAX_BACKING_NAME: usize = 1023;
/// Compression types.
const COMPRESSION_DEFLATE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;

/// snapdelta's record of an export, kept in a header extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportRecord {
    /// The target's true size (the virtual size is rounded up to 512).
    pub target_size: u64,
    /// The base's size.
    pub base_size: u64,
    /// BLAKE3 of the base, when computed.
    pub base_digest: Option<[u8; 32]>,
    /// BLAKE3 of the target, when computed.
    pub target_digest: Option<[u8; 32]>,
}

impl ExportRecord {
    fn encode(&self) -> [u8; EXT_SNAPDELTA_LEN] {
        let mut b = [0u8; EXT_SNAPDELTA_LEN];
        b[0..4].copy_from_slice(&1u32.to_be_bytes());
        let flags =
            u32::from(self.base_digest.is_some()) | (u32::from(self.target_digest.is_some()) << 1);
        b[4..8].copy_from_slice(&flags.to_be_bytes());
        b[8..16].copy_from_slice(&self.target_size.to_be_bytes());
        b[16..24].copy_from_slice(&self.base_size.to_be_bytes());
        if let Some(d) = self.base_digest {
            b[24..56].copy_from_slice(&d);
        }
        if let Some(d) = self.target_digest {
            b[56..88].copy_from_slice(&d);
        }
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != EXT_SNAPDELTA_LEN || be32(b, 0) != 1 {
            return None;
        }
        let flags = be32(b, 4);
        if flags & !3 != 0 {
            return None;
        }
        let digest = |at: usize| -> [u8; 32] { b[at..at + 32].try_into().expect("32 bytes") };
        Some(ExportRecord {
            target_size: be64(b, 8),
            base_size: be64(b, 16),
            base_digest: (flags & 1 != 0).then(|| digest(24)),
            target_digest: (flags & 2 != 0).then(|| digest(56)),
        })
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("four bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("eight bytes"))
}
