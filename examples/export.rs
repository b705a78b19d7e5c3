//! Exports the changes from one image to another with the library API.
//!
//! `cargo run --release --example export -- BASE TARGET OUT`

use snapdelta::{export_images, BlockSize, Error, ExportOptions, ExtentListEncoder, Image};
use std::io::BufWriter;

fn main() -> snapdelta::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, target, out] = args.as_slice() else {
        eprintln!("usage: export BASE TARGET OUT");
        std::process::exit(2);
    };
    let base = Image::open(base)?;
    let target = Image::open(target)?;
    let file = std::fs::File::create(out).map_err(|e| Error::io(out, e))?;
    let mut encoder = ExtentListEncoder::new(BufWriter::new(file), true, Some(3));
    let options = ExportOptions {
        block_size: BlockSize::new(65536)?,
        digests: true,
    };
    let summary = export_images(Some(&base), &target, &mut encoder, &options, &mut |_| {})?;
    println!(
        "{} data extents, {} zero extents, {} bytes written",
        summary.data_extents, summary.zero_extents, summary.bytes_written
    );
    Ok(())
}
