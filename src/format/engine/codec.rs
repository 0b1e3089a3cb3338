//! Decompressing one compressed unit (a qcow2 cluster, a VMDK grain), exactly as
//! qemu defines success for each format (moved here from the qcow2 reader so every
//! format shares it):
//! - qcow2 deflate (`qcow2-notes.md` section 8): raw deflate that must produce at
//!   least a cluster; extra output is discarded, as qemu does.
//! - qcow2 zstd: several frames may fill the cluster; a frame must end exactly at
//!   the cluster's end.
//! - zlib (VMDK streamOptimized grains, `formats-notes.md` 1.4): an RFC 1950 stream
//!   that must end, inflating to no more than a grain and at least the part of the
//!   grain inside the disk.
//!
//! Memory per call: one unit of output.

use flate2::{Decompress, FlushDecompress, Status};

/// How a compressed unit is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Raw deflate, qcow2's rules.
    Deflate,
    /// zstd frames, qcow2's rules.
    Zstd,
    /// A zlib stream, VMDK's rules.
    Zlib,
}

/// Decompresses `input` into at most `unit_size` bytes: exactly `unit_size` for the
/// qcow2 codecs, at least `needed` for zlib. Says why not otherwise.
pub fn decompress(
    codec: Codec,
    input: &[u8],
    unit_size: usize,
    needed: usize,
) -> Result<Vec<u8>, String> {
    match codec {
        Codec::Deflate => inflate_cluster(input, unit_size),
        Codec::Zstd => unzstd_cluster(input, unit_size),
        Codec::Zlib => inflate_zlib(input, unit_size, needed),
    }
}

/// Same as [`decompress`] for the qcow2 codecs, which always fill the unit.
#[cfg(test)]
fn decompress_cluster(codec: Codec, input: &[u8], unit_size: usize) -> Result<Vec<u8>, String> {
    decompress(codec, input, unit_size, unit_size)
}

fn inflate_zlib(input: &[u8], unit_size: usize, needed: usize) -> Result<Vec<u8>, String> {
    // One byte of room past the unit tells "too long" from "exactly a unit".
    let mut out = vec![0u8; unit_size + 1];
    let mut inflater = Decompress::new(true);
    loop {
        let in_at = inflater.total_in() as usize;
        let out_at = inflater.total_out() as usize;
        let status = inflater
            .decompress(&input[in_at..], &mut out[out_at..], FlushDecompress::Finish)
            .map_err(|e| format!("zlib stream is corrupt: {e}"))?;
        let produced = inflater.total_out() as usize;
        if produced > unit_size {
            return Err(format!(
                "inflates to more than a grain of {unit_size} bytes"
            ));
        }
        if status == Status::StreamEnd {
            if produced < needed {
                return Err(format!(
                    "inflated to {produced} bytes, expected at least {needed}"
                ));
            }
            out.truncate(produced);
            return Ok(out);
        }
        let progressed = inflater.total_in() as usize != in_at || produced != out_at;
        if !progressed {
            return Err(format!(
                "the zlib stream ends early, after {produced} bytes of output"
            ));
        }
    }
}

fn inflate_cluster(input: &[u8], cluster_size: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; cluster_size];
    let mut inflater = Decompress::new(false);
    loop {
        let in_at = inflater.total_in() as usize;
        let out_at = inflater.total_out() as usize;
        if out_at == cluster_size {
            return Ok(out);
        }
        let status = inflater
            .decompress(&input[in_at..], &mut out[out_at..], FlushDecompress::None)
            .map_err(|e| format!("deflate stream is corrupt: {e}"))?;
        let progressed =
            inflater.total_in() as usize != in_at || inflater.total_out() as usize != out_at;
        if inflater.total_out() as usize == cluster_size {
            return Ok(out);
        }
        if status == Status::StreamEnd || !progressed {
            return Err(format!(
                "decompressed to {} bytes, expected a whole cluster of {cluster_size}",
                inflater.total_out()
            ));
        }
    }
}

fn unzstd_cluster(input: &[u8], cluster_size: usize) -> Result<Vec<u8>, String> {
    use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer};
    let mut out = vec![0u8; cluster_size];
    let mut dctx = DCtx::create();
    let mut in_buf = InBuffer::around(input);
    let mut produced = 0usize;
    loop {
        let mut out_buf = OutBuffer::around(&mut out[produced..]);
        let before_in = in_buf.pos();
        let remaining_hint = dctx
            .decompress_stream(&mut out_buf, &mut in_buf)
            .map_err(|code| {
                format!(
                    "zstd stream is corrupt: {}",
                    zstd::zstd_safe::get_error_name(code)
                )
            })?;
        let wrote = out_buf.pos();
        produced += wrote;
        if produced == cluster_size {
            if remaining_hint != 0 {
                return Err("zstd frame does not end at the cluster boundary".into());
            }
            return Ok(out);
        }
        if wrote == 0 && in_buf.pos() == before_in {
            return Err(format!(
                "decompressed to {produced} bytes, expected a whole cluster of {cluster_size}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate_raw(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn deflate_cluster_round_trips_and_ignores_trailing_sector_bytes() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut packed = deflate_raw(&data);
        packed.extend_from_slice(&[0xAB; 300]);
        let out = decompress_cluster(Codec::Deflate, &packed, 4096).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn deflate_short_output_is_an_error() {
        let packed = deflate_raw(&[7u8; 1000]);
        let err = decompress_cluster(Codec::Deflate, &packed, 4096).unwrap_err();
        assert!(err.contains("1000 bytes"), "{err}");
    }

    #[test]
    fn deflate_truncated_input_is_an_error() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
        let packed = deflate_raw(&data);
        let err =
            decompress_cluster(Codec::Deflate, &packed[..packed.len() / 2], 4096).unwrap_err();
        assert!(err.contains("expected a whole cluster"), "{err}");
    }

    #[test]
    fn zstd_two_frames_fill_one_cluster() {
        let mut packed = zstd::bulk::compress(&[1u8; 2048], 3).unwrap();
        packed.extend(zstd::bulk::compress(&[2u8; 2048], 3).unwrap());
        let out = decompress_cluster(Codec::Zstd, &packed, 4096).unwrap();
        assert_eq!(&out[..2048], &[1u8; 2048][..]);
        assert_eq!(&out[2048..], &[2u8; 2048][..]);
    }

    #[test]
    fn zstd_overlong_frame_is_an_error() {
        let packed = zstd::bulk::compress(&[1u8; 8192], 3).unwrap();
        assert!(decompress_cluster(Codec::Zstd, &packed, 4096).is_err());
    }

    #[test]
    fn zlib_grain_may_end_short_only_past_the_disk() {
        let data = vec![5u8; 3000];
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        let packed = e.finish().unwrap();
        assert_eq!(decompress(Codec::Zlib, &packed, 4096, 3000).unwrap(), data);
        assert!(decompress(Codec::Zlib, &packed, 4096, 4096).is_err());
        assert!(
            decompress(Codec::Zlib, &packed, 2048, 2048).is_err(),
            "longer than a grain"
        );
        assert!(decompress(Codec::Zlib, &packed[..packed.len() - 6], 4096, 1).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decompress(Codec::Zlib, &[0xff; 64], 4096, 1).is_err());
        for c in [Codec::Deflate, Codec::Zstd] {
            assert!(decompress_cluster(c, &[0xff; 64], 4096).is_err());
            assert!(decompress_cluster(c, &[], 4096).is_err());
        }
    }
}
