//! Decompressing one compressed cluster, exactly as qemu defines success
//! (`qcow2-notes.md` section 8): deflate must produce at least a cluster (extra
//! output is discarded, as qemu does); zstd may use several frames and must end
//! a frame exactly at the cluster's end. Memory per call: one cluster of output.

use super::header::ClusterCompression;
use flate2::{Decompress, FlushDecompress, Status};

/// Decompresses `input` into exactly `cluster_size` bytes, or says why not.
pub fn decompress_cluster(
    compression: ClusterCompression,
    input: &[u8],
    cluster_size: usize,
) -> Result<Vec<u8>, String> {
    match compression {
        ClusterCompression::Deflate => inflate_cluster(input, cluster_size),
        ClusterCompression::Zstd => unzstd_cluster(input, cluster_size),
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
        let out = decompress_cluster(ClusterCompression::Deflate, &packed, 4096).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn deflate_short_output_is_an_error() {
        let packed = deflate_raw(&[7u8; 1000]);
        let err = decompress_cluster(ClusterCompression::Deflate, &packed, 4096).unwrap_err();
        assert!(err.contains("1000 bytes"), "{err}");
    }

    #[test]
    fn deflate_truncated_input_is_an_error() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
        let packed = deflate_raw(&data);
        let err = decompress_cluster(
            ClusterCompression::Deflate,
            &packed[..packed.len() / 2],
            4096,
        )
        .unwrap_err();
        assert!(err.contains("expected a whole cluster"), "{err}");
    }

    #[test]
    fn zstd_two_frames_fill_one_cluster() {
        let mut packed = zstd::bulk::compress(&[1u8; 2048], 3).unwrap();
        packed.extend(zstd::bulk::compress(&[2u8; 2048], 3).unwrap());
        let out = decompress_cluster(ClusterCompression::Zstd, &packed, 4096).unwrap();
        assert_eq!(&out[..2048], &[1u8; 2048][..]);
        assert_eq!(&out[2048..], &[2u8; 2048][..]);
    }

    #[test]
    fn zstd_overlong_frame_is_an_error() {
        let packed = zstd::bulk::compress(&[1u8; 8192], 3).unwrap();
        assert!(decompress_cluster(ClusterCompression::Zstd, &packed, 4096).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for c in [ClusterCompression::Deflate, ClusterCompression::Zstd] {
            assert!(decompress_cluster(c, &[0xff; 64], 4096).is_err());
            assert!(decompress_cluster(c, &[], 4096).is_err());
        }
    }
}
