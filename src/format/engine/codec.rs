//! Decompressing one compressed unit (a qcow2 cluster, a VMDK grain), exactly as
//! qemu defines success for each format (moved here from the qcow2 reader so every
//! format shares it):
//! - qcow2 deflate (`qcow2-notes.md` section 8): raw deflate that must produce at
//!   least a cluster; extra output is discarded, as qemu does.
//! - qcow2 zstd: several frames may fill the cluster; a frame must end exactly at
//!   the cluster's end. The decoder's window is limited to the unit's size, so a
//!   frame cannot make it allocate more than a unit.
//! - zlib (VMDK streamOptimized grains, `formats-notes.md` 1.4): an RFC 1950 stream
//!   that must end, inflating to no more than a grain and at least the part of the
//!   grain inside the disk.
//!
//! [`Decoders`] keeps one context per codec and is reused unit after unit (one per
//! inflate thread). Memory per call: one unit of output.
//!
//! Deflate and zlib units are first inflated whole by libdeflate, which is faster
//! than a streaming inflater because it knows the whole input and the output's room
//! (issue 8: compressed qcow2 was bound by inflate speed). It is trusted only for
//! the plain case, a stream that ends inside the unit with an acceptable length;
//! anything else (a stream longer than the unit, one that never ends, corrupt data)
//! is decided again by the streaming inflater, which implements qemu's rules above
//! and says why a unit is refused. Both check every distance and length, so the fast
//! path accepts nothing the rules refuse.

use bytes::Bytes;
use flate2::{Decompress, FlushDecompress, Status};
use libdeflater::Decompressor as WholeInflater;
use zstd::zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

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
/// qcow2 codecs, at least `needed` for zlib. Says why not otherwise. Makes fresh
/// contexts; [`Decoders::decompress`] reuses them.
pub fn decompress(
    codec: Codec,
    input: &[u8],
    unit_size: usize,
    needed: usize,
) -> Result<Vec<u8>, String> {
    Decoders::default().decompress(codec, input, unit_size, needed)
}

/// One reusable context per codec, made on first use.
#[derive(Default)]
pub struct Decoders {
    whole: Option<WholeInflater>,
    deflate: Option<Decompress>,
    zlib: Option<Decompress>,
    zstd: Option<(DCtx<'static>, u32)>,
}

impl Decoders {
    /// As [`decompress`], reusing this set's contexts.
    pub fn decompress(
        &mut self,
        codec: Codec,
        input: &[u8],
        unit_size: usize,
        needed: usize,
    ) -> Result<Vec<u8>, String> {
        match codec {
            Codec::Deflate => {
                if let Some(out) = self.inflate_whole(input, unit_size, unit_size, false) {
                    return Ok(out);
                }
                let inflater = reset_inflater(&mut self.deflate, false);
                inflate_cluster(inflater, input, unit_size)
            }
            Codec::Zlib => {
                if let Some(out) = self.inflate_whole(input, unit_size, needed, true) {
                    return Ok(out);
                }
                let inflater = reset_inflater(&mut self.zlib, true);
                inflate_zlib(inflater, input, unit_size, needed)
            }
            Codec::Zstd => {
                let window_log = window_log_for(unit_size);
                if self.zstd.as_ref().is_none_or(|(_, w)| *w != window_log) {
                    let mut dctx = DCtx::create();
                    dctx.set_parameter(DParameter::WindowLogMax(window_log))
                        .map_err(|code| {
                            format!(
                                "zstd decoder setup: {}",
                                zstd::zstd_safe::get_error_name(code)
                            )
                        })?;
                    self.zstd = Some((dctx, window_log));
                }
                let (dctx, _) = self.zstd.as_mut().expect("made above");
                dctx.reset(ResetDirective::SessionOnly)
                    .map_err(|code| zstd::zstd_safe::get_error_name(code).to_string())?;
                unzstd_cluster(dctx, input, unit_size)
            }
        }
    }

    /// As [`decompress`](Self::decompress) with `needed = keep`, then only the
    /// first `keep` bytes: the part of the unit inside the disk.
    pub fn decompress_kept(
        &mut self,
        codec: Codec,
        input: &[u8],
        unit_size: usize,
        keep: usize,
    ) -> Result<Bytes, String> {
        let mut out = Bytes::from(self.decompress(codec, input, unit_size, keep)?);
        out.truncate(keep);
        Ok(out)
    }

    /// The fast path: a raw deflate stream (or, with `zlib_header`, a zlib stream)
    /// that ends within `unit_size` bytes of output, at least `needed` of them.
    /// `None` leaves the unit to the streaming inflater (see the module doc).
    fn inflate_whole(
        &mut self,
        input: &[u8],
        unit_size: usize,
        needed: usize,
        zlib_header: bool,
    ) -> Option<Vec<u8>> {
        let inflater = self.whole.get_or_insert_with(WholeInflater::new);
        let mut out = vec![0u8; unit_size];
        let produced = if zlib_header {
            inflater.zlib_decompress(input, &mut out)
        } else {
            inflater.deflate_decompress(input, &mut out)
        }
        .ok()?;
        if produced < needed {
            return None;
        }
        out.truncate(produced);
        Some(out)
    }
}

/// The smallest window log zstd accepts that covers a unit (10 = 1 KiB).
fn window_log_for(unit_size: usize) -> u32 {
    (usize::BITS - unit_size.saturating_sub(1).leading_zeros()).max(10)
}

fn reset_inflater(slot: &mut Option<Decompress>, zlib_header: bool) -> &mut Decompress {
    match slot {
        Some(inflater) => {
            inflater.reset(zlib_header);
            inflater
        }
        None => slot.insert(Decompress::new(zlib_header)),
    }
}

/// Same as [`decompress`] for the qcow2 codecs, which always fill the unit.
#[cfg(test)]
fn decompress_cluster(codec: Codec, input: &[u8], unit_size: usize) -> Result<Vec<u8>, String> {
    decompress(codec, input, unit_size, unit_size)
}

fn inflate_zlib(
    inflater: &mut Decompress,
    input: &[u8],
    unit_size: usize,
    needed: usize,
) -> Result<Vec<u8>, String> {
    // One byte of room past the unit tells "too long" from "exactly a unit".
    let mut out = Vec::with_capacity(unit_size + 1);
    loop {
        let in_at = inflater.total_in() as usize;
        let out_at = out.len();
        let status = inflater
            .decompress_vec(&input[in_at..], &mut out, FlushDecompress::Finish)
            .map_err(|e| format!("zlib stream is corrupt: {e}"))?;
        let produced = out.len();
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

fn inflate_cluster(
    inflater: &mut Decompress,
    input: &[u8],
    cluster_size: usize,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(cluster_size);
    loop {
        let in_at = inflater.total_in() as usize;
        let out_at = out.len();
        if out_at == cluster_size {
            return Ok(out);
        }
        let status = inflater
            .decompress_vec(&input[in_at..], &mut out, FlushDecompress::None)
            .map_err(|e| format!("deflate stream is corrupt: {e}"))?;
        let progressed = inflater.total_in() as usize != in_at || out.len() != out_at;
        if out.len() == cluster_size {
            return Ok(out);
        }
        if status == Status::StreamEnd || !progressed {
            return Err(format!(
                "decompressed to {} bytes, expected a whole cluster of {cluster_size}",
                out.len()
            ));
        }
    }
}

fn unzstd_cluster(
    dctx: &mut DCtx<'static>,
    input: &[u8],
    cluster_size: usize,
) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(cluster_size);
    let mut in_buf = InBuffer::around(input);
    loop {
        let before_out = out.len();
        let before_in = in_buf.pos();
        let remaining_hint = {
            let mut out_buf = OutBuffer::around_pos(&mut out, before_out);
            dctx.decompress_stream(&mut out_buf, &mut in_buf)
                .map_err(|code| {
                    format!(
                        "zstd stream is corrupt: {}",
                        zstd::zstd_safe::get_error_name(code)
                    )
                })?
        };
        let produced = out.len();
        if produced == cluster_size {
            if remaining_hint != 0 {
                return Err("zstd frame does not end at the cluster boundary".into());
            }
            return Ok(out);
        }
        if produced == before_out && in_buf.pos() == before_in {
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
    fn deflate_longer_than_a_cluster_keeps_the_cluster() {
        // The fast path refuses (no room); the streaming inflater keeps the first
        // cluster and drops the rest, as qemu does.
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
        let packed = deflate_raw(&data);
        let out = decompress_cluster(Codec::Deflate, &packed, 4096).unwrap();
        assert_eq!(out, &data[..4096]);
    }

    #[test]
    fn deflate_cut_after_filling_the_cluster_is_accepted() {
        // A stream that never ends but has produced the whole cluster: qemu accepts
        // it; the fast path cannot tell, so the streaming inflater decides.
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 31 % 256) as u8).collect();
        let packed = deflate_raw(&data);
        let whole = decompress_cluster(Codec::Deflate, &packed, 4096).unwrap();
        let cut = &packed[..packed.len() * 3 / 4];
        assert_eq!(
            decompress_cluster(Codec::Deflate, cut, 4096).unwrap(),
            whole
        );
    }

    #[test]
    fn fast_and_streaming_inflaters_agree_on_plain_clusters() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 7 % 256) as u8).collect();
        let packed = deflate_raw(&data);
        let mut decoders = Decoders::default();
        let fast = decoders
            .inflate_whole(&packed, 65536, 65536, false)
            .expect("a plain cluster takes the fast path");
        let streaming = inflate_cluster(&mut Decompress::new(false), &packed, 65536).unwrap();
        assert_eq!(fast, streaming);
        assert_eq!(fast, data);
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
