//! Sniffing and streaming decompression of the input (gzip, xz, zstd, bzip2).
//!
//! This module owns the stage between the source and the format reader:
//! [`decode_all`] looks at the first bytes of the input, and while they are
//! the magic of a compression format it wraps the reader in that format's
//! streaming decoder and looks again at the *decoded* bytes, so nested
//! wrappers (`.qcow2.gz.xz`) are peeled one after the other, outermost first,
//! up to [`DecodeOptions::max_layers`] layers. Sniffing consumes nothing: the
//! bytes looked at are handed back in front of the stream.
//!
//! Every decoder accepts what its command-line tool accepts as one file:
//! several gzip members, several xz streams (with stream padding), several
//! zstd frames (skippable frames included), several bzip2 streams.
//!
//! # Errors are never short streams
//!
//! A truncated or corrupt compressed stream is an [`io::Error`] from `read`,
//! never an early `Ok(0)`: an importer that took a truncated download for the
//! whole disk would write a silently damaged disk. The error wraps a
//! [`StreamError`] that names the format (`"gzip stream ended early (truncated
//! download?)"`, `"xz stream is corrupt: compressed data is corrupt"`); use
//! [`stream_error`] to get at it. Errors of the reader *below* a decoder (the
//! source, or an outer decoder) pass through unchanged, so the message always
//! names the layer that failed.
//!
//! Bytes after the end of the last member / stream / frame are an error in
//! every format, including zero bytes after a gzip member (GNU gzip only warns
//! about those). An importer should not guess what extra bytes were meant to
//! be. The one exception is xz stream padding (zero bytes in multiples of
//! four), which the xz format defines. (gzip: junk shorter than a member
//! header, 10 bytes, reads as a cut-off next member and is reported as
//! "ended early".)
//!
//! What each format can detect differs: gzip, xz and bzip2 carry checksums of
//! the data; a zstd frame does only if it was written with one (the `zstd`
//! tool does by default, `--no-check` turns it off), so a zstd frame without
//! a checksum can decode damaged literals without an error.
//!
//! # Memory
//!
//! Decoders allocate according to what the stream header asks for, within
//! the limits of [`crate::limits`] (derived from the cgroup memory limit):
//! xz decoding stops with an error above [`DecodeOptions::xz_memlimit`], and
//! zstd frames may use windows up to `2^zstd_window_log_max` bytes. A stream
//! that needs more fails with [`StreamError::MemoryLimit`], whose message
//! names the limit and what it was derived from; it is never OOM-killed.
//! (zstd is decoded on a raw `DCtx`, [`ZstdReader`], so that a window above
//! the limit is known by zstd's error code, not by its message.)

//! # Threads
//!
//! An xz stream written in blocks whose headers state their sizes (`xz -T0`
//! writes them) is decoded block-parallel ([`xz_parallel`]: threads =
//! available cores, as many as fit under
//! [`DecodeOptions::xz_memlimit_threading`], see [`xz_threads`]), with
//! bounded queues instead of liblzma's whole-block buffers. Where fewer than
//! two threads fit, or the first block header carries no sizes (a
//! single-threaded encoder writes none), the stream is decoded directly on
//! one thread ([`XzReader`]), stream concatenation and padding handled here
//! the way `LZMA_CONCATENATED` does.

use std::fmt;
use std::io::{self, BufRead, BufReader, Cursor, Read};

use liblzma::stream::{Action, Status, Stream};
use zstd::zstd_safe;

use crate::piece::{plain, Input, Replay};

mod xz_frame;
mod xz_parallel;
mod xz_threads;

/// A compression wrapper recognized from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (RFC 1952), possibly several members.
    Gzip,
    /// xz, possibly several streams.
    Xz,
    /// zstd, possibly several frames.
    Zstd,
    /// bzip2, possibly several streams.
    Bzip2,
}

impl Compression {
    /// The short lower-case name (`"gzip"`, `"xz"`, `"zstd"`, `"bzip2"`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many leading bytes [`sniff_compression`] needs to see to decide
/// (fewer is fine at EOF: it then answers for what it has).
pub const COMPRESSION_SNIFF_LEN: usize = 10;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// bzip2 block header magic (BCD digits of pi), right after "BZh" + level.
const BZIP2_BLOCK_MAGIC: &[u8] = &[0x31, 0x41, 0x59, 0x26, 0x53, 0x59];
/// bzip2 end-of-stream magic (BCD digits of sqrt(pi)): an empty stream.
const BZIP2_EOS_MAGIC: &[u8] = &[0x17, 0x72, 0x45, 0x38, 0x50, 0x90];

/// Names the compression wrapper whose magic `head` starts with, if any.
///
/// gzip needs only its two magic bytes (a raw disk practically never starts
/// with them, and a damaged gzip header must fail loudly rather than be
/// imported as a disk). zstd accepts frames and skippable frames
/// (`0x184D2A50..=0x184D2A5F`, little-endian). bzip2 is only recognized with
/// "BZh", a level digit and a block (or end-of-stream) magic, ten bytes in all,
/// because "BZh" alone is plain text.
pub fn sniff_compression(head: &[u8]) -> Option<Compression> {
    if head.starts_with(GZIP_MAGIC) {
        return Some(Compression::Gzip);
    }
    if head.starts_with(XZ_MAGIC) {
        return Some(Compression::Xz);
    }
    if head.starts_with(ZSTD_MAGIC) {
        return Some(Compression::Zstd);
    }
    if head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18] {
        return Some(Compression::Zstd);
    }
    if head.len() >= 10
        && head.starts_with(b"BZh")
        && (b'1'..=b'9').contains(&head[3])
        && (&head[4..10] == BZIP2_BLOCK_MAGIC || &head[4..10] == BZIP2_EOS_MAGIC)
    {
        return Some(Compression::Bzip2);
    }
    None
}

/// Limits and tuning of [`decode_all_with`]; [`Default`] is what
/// [`decode_all`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeOptions {
    /// How many compression layers may be peeled; one more is an error.
    pub max_layers: usize,
    /// xz decoder threads; 0 means the available cores.
    pub xz_threads: u32,
    /// Above this much memory the xz decoder uses fewer threads (soft limit).
    pub xz_memlimit_threading: u64,
    /// Above this much memory xz decoding fails (hard limit).
    pub xz_memlimit: u64,
    /// Largest zstd window accepted, as a power of two (10..=31).
    pub zstd_window_log_max: u32,
    /// What the limits were derived from, for messages ("the 600 MiB cgroup
    /// v1 memory limit").
    pub limits_basis: String,
}

impl Default for DecodeOptions {
    /// The limits of [`crate::limits::current`].
    fn default() -> Self {
        let limits = crate::limits::current();
        DecodeOptions {
            max_layers: 4,
            xz_threads: 0,
            xz_memlimit_threading: limits.xz_memlimit_threading,
            xz_memlimit: limits.xz_memlimit,
            zstd_window_log_max: limits.zstd_window_log_max,
            limits_basis: limits.basis_text(),
        }
    }
}

/// Why a compressed stream could not be decoded. Carried inside the
/// [`io::Error`] that a decoding reader returns (see [`stream_error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The compressed bytes are not valid for the format.
    #[error("{format} stream is corrupt: {detail}")]
    Corrupt {
        /// Which wrapper.
        format: Compression,
        /// What the decoder said.
        detail: String,
    },
    /// The input ended inside the compressed stream.
    #[error("{format} stream ended early (truncated download?)")]
    Truncated {
        /// Which wrapper.
        format: Compression,
    },
    /// Decoding would need more memory than allowed.
    #[error(
        "{format} stream needs more than the {limit_mib} MiB {what} limit to decode \
         (derived from the {basis}); refusing it instead of running out of memory"
    )]
    MemoryLimit {
        /// Which wrapper.
        format: Compression,
        /// What is limited: "memory" (xz) or "window" (zstd).
        what: &'static str,
        /// The limit, in MiB.
        limit_mib: u64,
        /// What the limit was derived from.
        basis: String,
    },
}

/// The [`StreamError`] inside an error returned by a reader from
/// [`decode_all`], if the error is a decoding error (and not, say, a network
/// error of the source underneath).
pub fn stream_error(error: &io::Error) -> Option<&StreamError> {
    error.get_ref()?.downcast_ref::<StreamError>()
}

/// Errors of the decoding stage.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Reading the input failed.
    #[error("reading the input: {0}")]
    Io(#[from] std::io::Error),
    /// A compression layer is corrupt or truncated right at its start.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// More nested compression layers than [`DecodeOptions::max_layers`].
    #[error("more than {limit} nested compression layers ({layers}); refusing to decode further")]
    TooManyLayers {
        /// The limit.
        limit: usize,
        /// The layers found, outermost first, e.g. "gzip in xz in gzip".
        layers: String,
    },
    /// A decoder could not be set up (options refused, no memory).
    #[error("starting the {format} decoder: {detail}")]
    Init {
        /// Which wrapper.
        format: Compression,
        /// What went wrong.
        detail: String,
    },
}

/// Buffer between each decoder and the reader below it.
const INPUT_BUFFER: usize = 256 << 10;

/// Peels every compression wrapper off `input` (sniffed from the bytes), and
/// returns the wrappers found, outermost first, with the decoded stream.
pub fn decode_all(input: Input) -> Result<(Vec<Compression>, Input), DecodeError> {
    decode_all_with(input, &DecodeOptions::default())
}

/// [`decode_all`] with explicit limits.
pub fn decode_all_with(
    input: Input,
    options: &DecodeOptions,
) -> Result<(Vec<Compression>, Input), DecodeError> {
    let mut layers = Vec::new();
    let mut current = input;
    loop {
        let head = read_head(&mut *current, COMPRESSION_SNIFF_LEN)?;
        let found = sniff_compression(&head);
        current = Box::new(Replay::new(head.into(), current));
        let Some(format) = found else {
            return Ok((layers, current));
        };
        if layers.len() == options.max_layers {
            layers.push(format);
            let names: Vec<&str> = layers.iter().rev().map(|c| c.name()).collect();
            return Err(DecodeError::TooManyLayers {
                limit: options.max_layers,
                layers: names.join(" in "),
            });
        }
        current = wrap(format, current, options)?;
        layers.push(format);
    }
}

/// Reads up to `n` bytes, fewer only at EOF; a failure is the decoding
/// error it carries (of a layer below), else the read's.
fn read_head(input: &mut dyn Read, n: usize) -> Result<Vec<u8>, DecodeError> {
    let mut head = Vec::with_capacity(n);
    match input.take(n as u64).read_to_end(&mut head) {
        Ok(_) => Ok(head),
        Err(e) => Err(match stream_error(&e) {
            Some(se) => DecodeError::Stream(se.clone()),
            None => DecodeError::Io(e),
        }),
    }
}

/// Puts the streaming decoder for `format` on top of `input`.
fn wrap(format: Compression, input: Input, options: &DecodeOptions) -> Result<Input, DecodeError> {
    let below = BufReader::with_capacity(INPUT_BUFFER, Upstream(input));
    let init = |e: &dyn fmt::Display| DecodeError::Init {
        format,
        detail: e.to_string(),
    };
    Ok(match format {
        Compression::Gzip => plain(Checked::new(
            format,
            flate2::bufread::MultiGzDecoder::new(below),
        )),
        Compression::Xz => plain(Checked::new(format, xz_reader(below, options)?)),
        Compression::Zstd => plain(Checked::new(
            format,
            ZstdReader::new(below, options).map_err(|e| init(&e))?,
        )),
        Compression::Bzip2 => plain(Checked::new(
            format,
            bzip2::bufread::MultiBzDecoder::new(below),
        )),
    })
}

/// An error of the reader below a decoder, marked so that the decoder's
/// [`Checked`] wrapper passes it on unchanged instead of blaming the format.
#[derive(Debug)]
struct UpstreamError(io::Error);

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The reader below a decoder: marks its errors as [`UpstreamError`].
struct Upstream(Input);

impl Read for Upstream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                e
            } else {
                io::Error::new(e.kind(), UpstreamError(e))
            }
        })
    }
}

/// A decoder's output: turns the decoder's own errors into [`StreamError`]s
/// naming the format, and unmarks errors from below.
struct Checked<D> {
    format: Compression,
    inner: D,
    /// Decoded bytes handed out so far.
    produced: u64,
}

impl<D: Read> Checked<D> {
    fn new(format: Compression, inner: D) -> Self {
        Checked {
            format,
            inner,
            produced: 0,
        }
    }

    fn classify(&self, e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::Interrupted {
            return e;
        }
        if e.get_ref().is_some_and(|r| r.is::<UpstreamError>()) {
            let inner = e.into_inner().expect("checked above");
            return match inner.downcast::<UpstreamError>() {
                Ok(up) => up.0,
                Err(other) => io::Error::other(other),
            };
        }
        if stream_error(&e).is_some() {
            return e;
        }
        let format = self.format;
        let error = if e.kind() == io::ErrorKind::UnexpectedEof {
            StreamError::Truncated { format }
        } else {
            let mut detail = e.to_string();
            if format == Compression::Gzip && self.produced > 0 && detail == "invalid gzip header" {
                // The first member's header is parsed before any output, so
                // this is what follows a complete member.
                detail = "the data after a complete gzip member is not another gzip \
                          member (trailing garbage)"
                    .into();
            }
            StreamError::Corrupt { format, detail }
        };
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

impl<D: Read> Read for Checked<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.produced += n as u64;
                Ok(n)
            }
            Err(e) => Err(self.classify(e)),
        }
    }
}

/// Multi-stream xz decoding on liblzma's stream decoder, on the calling thread.
///
/// Decodes one stream at a time; after each, skips stream padding (zero bytes,
/// a multiple of four) and starts a new decoder if more bytes follow, which
/// must then be another xz stream. Produces [`StreamError`]s itself.
struct XzReader<R> {
    input: R,
    /// The decoder of the current stream; `None` between streams.
    stream: Option<Stream>,
    memlimit: u64,
    /// What the limit was derived from.
    limits_basis: String,
    /// Streams decoded completely so far.
    streams_done: u64,
    /// Consecutive `process` calls that made no progress.
    stalls: u32,
    done: bool,
}

/// The xz decoder over `input`: block-parallel where the first block header
/// states its sizes and at least two threads fit under the threading limit
/// ([`xz_threads`]), else liblzma's stream decoder on the calling thread.
fn xz_reader<R: BufRead + Send + 'static>(
    mut input: R,
    options: &DecodeOptions,
) -> Result<Box<dyn Read + Send>, DecodeError> {
    let cores = match options.xz_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
        n => n,
    };
    let head = read_head(&mut input, xz_threads::HEAD_LEN)?;
    let first = xz_threads::first_block(&head);
    let threads = xz_threads::threads(first, cores, options.xz_memlimit_threading);
    tracing::debug!(?first, threads, "xz decoder");
    let input = Cursor::new(head).chain(input);
    if threads >= 2 {
        let limits = xz_parallel::Limits {
            memlimit: options.xz_memlimit / u64::from(threads),
            basis: options.limits_basis.clone(),
        };
        let reader = xz_parallel::ParallelXz::new(input, threads, limits).map_err(|e| {
            DecodeError::Init {
                format: Compression::Xz,
                detail: format!("cannot start the decoder threads: {e}"),
            }
        })?;
        return Ok(Box::new(reader));
    }
    Ok(Box::new(XzReader::new(input, options).map_err(|e| {
        DecodeError::Init {
            format: Compression::Xz,
            detail: e.to_string(),
        }
    })?))
}

impl<R: BufRead> XzReader<R> {
    /// liblzma's stream decoder over `input`, one stream after the other.
    fn new(input: R, options: &DecodeOptions) -> Result<Self, liblzma::stream::Error> {
        Ok(XzReader {
            input,
            stream: Some(Stream::new_stream_decoder(options.xz_memlimit, 0)?),
            memlimit: options.xz_memlimit,
            limits_basis: options.limits_basis.clone(),
            streams_done: 0,
            stalls: 0,
            done: false,
        })
    }

    fn error(&self, error: StreamError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    fn corrupt(&self, detail: impl Into<String>) -> io::Error {
        self.error(StreamError::Corrupt {
            format: Compression::Xz,
            detail: detail.into(),
        })
    }

    fn lzma_error(&self, e: liblzma::stream::Error) -> io::Error {
        xz_error(e, self.memlimit, &self.limits_basis, self.streams_done)
    }

    /// After a stream: skips padding; true if another stream follows.
    fn skip_padding(&mut self) -> io::Result<bool> {
        xz_frame::skip_padding(&mut self.input, self.streams_done)?
            .map_err(|detail| self.corrupt(detail))
    }
}

impl<R: BufRead> Read for XzReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.done {
                return Ok(0);
            }
            if self.stream.is_none() {
                if !self.skip_padding()? {
                    self.done = true;
                    return Ok(0);
                }
                let stream =
                    Stream::new_stream_decoder(self.memlimit, 0).map_err(|e| self.lzma_error(e))?;
                self.stream = Some(stream);
            }
            let stream = self.stream.as_mut().expect("set above");
            let input = self.input.fill_buf()?;
            let eof = input.is_empty();
            let (in_before, out_before) = (stream.total_in(), stream.total_out());
            let action = if eof { Action::Finish } else { Action::Run };
            let status = stream.process(input, buf, action);
            let consumed = (stream.total_in() - in_before) as usize;
            let produced = (stream.total_out() - out_before) as usize;
            self.input.consume(consumed);
            match status {
                Err(e) => return Err(self.lzma_error(e)),
                Ok(Status::StreamEnd) => {
                    self.stream = None;
                    self.streams_done += 1;
                    self.stalls = 0;
                    if produced > 0 {
                        return Ok(produced);
                    }
                }
                Ok(status) => {
                    if produced > 0 {
                        self.stalls = 0;
                        return Ok(produced);
                    }
                    if consumed > 0 {
                        self.stalls = 0;
                        continue;
                    }
                    // liblzma answers LZMA_BUF_ERROR (MemNeeded here) on the
                    // second call in a row without progress.
                    self.stalls += 1;
                    if status == Status::MemNeeded || self.stalls > 3 {
                        if eof {
                            return Err(self.error(StreamError::Truncated {
                                format: Compression::Xz,
                            }));
                        }
                        return Err(self.corrupt("the decoder makes no progress"));
                    }
                }
            }
        }
    }
}

/// liblzma's error `e` as a [`StreamError`] (or an allocation failure):
/// `memlimit` and `basis` name the hard limit, `streams_done` tells trailing
/// garbage from a bad start.
fn xz_error(e: liblzma::stream::Error, memlimit: u64, basis: &str, streams_done: u64) -> io::Error {
    use liblzma::stream::Error as E;
    let corrupt = |detail: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            StreamError::Corrupt {
                format: Compression::Xz,
                detail,
            },
        )
    };
    match e {
        E::MemLimit => io::Error::new(
            io::ErrorKind::InvalidData,
            StreamError::MemoryLimit {
                format: Compression::Xz,
                what: "memory",
                limit_mib: memlimit >> 20,
                basis: basis.to_string(),
            },
        ),
        E::Mem => io::Error::new(
            io::ErrorKind::OutOfMemory,
            "xz decoder: cannot allocate memory",
        ),
        E::Format if streams_done > 0 => corrupt(format!(
            "the data after xz stream {streams_done} is not another xz stream (trailing garbage)"
        )),
        E::Format => corrupt("not an xz stream (bad magic)".into()),
        E::Data => corrupt("compressed data is corrupt".into()),
        E::Options => corrupt("unsupported header or filter options".into()),
        E::UnsupportedCheck => corrupt("unsupported integrity check type".into()),
        other => corrupt(other.to_string()),
    }
}

/// Multi-frame zstd decoding on zstd's streaming `DCtx`: frames one after
/// the other (skippable frames included), windows up to
/// `2^zstd_window_log_max`. Produces [`StreamError`]s itself, telling a frame
/// that asks for a larger window (zstd's `frameParameter_windowTooLarge`)
/// from a corrupt one.
struct ZstdReader<R> {
    input: R,
    dctx: zstd_safe::DCtx<'static>,
    window_log_max: u32,
    limits_basis: String,
    /// No frame is partly decoded (none began, or the last one ended).
    between_frames: bool,
    done: bool,
}

impl<R: BufRead> ZstdReader<R> {
    fn new(input: R, options: &DecodeOptions) -> Result<Self, String> {
        let mut dctx = zstd_safe::DCtx::try_create().ok_or("cannot allocate a zstd context")?;
        dctx.set_parameter(zstd_safe::DParameter::WindowLogMax(
            options.zstd_window_log_max,
        ))
        .map_err(|code| zstd_safe::get_error_name(code).to_string())?;
        Ok(ZstdReader {
            input,
            dctx,
            window_log_max: options.zstd_window_log_max,
            limits_basis: options.limits_basis.clone(),
            between_frames: true,
            done: false,
        })
    }

    fn error(&self, code: zstd_safe::ErrorCode) -> io::Error {
        use zstd_safe::zstd_sys::ZSTD_ErrorCode as E;
        // SAFETY: ZSTD_getErrorCode only does arithmetic on its argument.
        let kind = unsafe { zstd_safe::zstd_sys::ZSTD_getErrorCode(code) };
        let error = match kind {
            E::ZSTD_error_frameParameter_windowTooLarge => StreamError::MemoryLimit {
                format: Compression::Zstd,
                what: "window",
                limit_mib: (1u64 << self.window_log_max) >> 20,
                basis: self.limits_basis.clone(),
            },
            E::ZSTD_error_memory_allocation => {
                return io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "zstd decoder: cannot allocate memory",
                )
            }
            _ => StreamError::Corrupt {
                format: Compression::Zstd,
                detail: zstd_safe::get_error_name(code).to_string(),
            },
        };
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.done {
            return Ok(0);
        }
        loop {
            let input = self.input.fill_buf()?;
            let eof = input.is_empty();
            if eof && self.between_frames {
                self.done = true;
                return Ok(0);
            }
            let mut in_buffer = zstd_safe::InBuffer::around(input);
            let mut out_buffer = zstd_safe::OutBuffer::around(&mut *buf);
            let result = self.dctx.decompress_stream(&mut out_buffer, &mut in_buffer);
            let (consumed, produced) = (in_buffer.pos(), out_buffer.pos());
            self.input.consume(consumed);
            match result {
                Err(code) => {
                    self.done = true;
                    return Err(self.error(code));
                }
                Ok(hint) => {
                    self.between_frames = hint == 0;
                    if produced > 0 {
                        return Ok(produced);
                    }
                    if eof {
                        // Input ended inside a frame, with nothing left to flush.
                        self.done = true;
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            StreamError::Truncated {
                                format: Compression::Zstd,
                            },
                        ));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liblzma::stream::MtStreamBuilder;
    use std::io::Write;

    /// Deterministic, somewhat compressible test data.
    fn sample(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if (i / 512) % 3 == 0 {
                    0
                } else {
                    (x % 16) as u8 + b'a'
                }
            })
            .collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// xz in several blocks, so the threaded decoder really runs in parallel.
    fn xz_blocks(data: &[u8]) -> Vec<u8> {
        xz_in_blocks(data, 16 << 10)
    }

    /// `data` in blocks of `block` bytes, both sizes in every block header
    /// (as `xz -T0` writes them); also used by the xz decoders' tests.
    pub(super) fn xz_in_blocks(data: &[u8], block: u64) -> Vec<u8> {
        let stream = MtStreamBuilder::new()
            .threads(2)
            .block_size(block)
            .preset(1)
            .encoder()
            .unwrap();
        let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// zstd with a content checksum, as the `zstd` tool writes by default.
    /// (Without one, a frame cannot tell corrupt literals from good ones.)
    fn zstd(data: &[u8]) -> Vec<u8> {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.include_checksum(true).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn bzip2(data: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn encode(format: Compression, data: &[u8]) -> Vec<u8> {
        match format {
            Compression::Gzip => gzip(data),
            Compression::Xz => xz(data),
            Compression::Zstd => zstd(data),
            Compression::Bzip2 => bzip2(data),
        }
    }

    const ALL: [Compression; 4] = [
        Compression::Gzip,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
    ];

    /// Feeds `bytes` through `decode_all` and reads everything. A decoding
    /// error may come from `decode_all` (sniffing reads the first decoded
    /// bytes) or from reading; both end up as a `DecodeError`.
    fn decode(bytes: Vec<u8>) -> Result<(Vec<Compression>, Vec<u8>), DecodeError> {
        let (layers, mut reader) = decode_all(plain(Cursor::new(bytes)))?;
        let mut out = Vec::new();
        reader
            .read_to_end(&mut out)
            .map_err(|e| match stream_error(&e) {
                Some(se) => DecodeError::Stream(se.clone()),
                None => DecodeError::Io(e),
            })?;
        Ok((layers, out))
    }

    fn expect_stream_error<T>(result: Result<T, DecodeError>) -> StreamError {
        match result {
            Err(DecodeError::Stream(se)) => se,
            Err(other) => panic!("expected a StreamError, got {other:?}"),
            Ok(_) => panic!("expected a StreamError, decoding succeeded"),
        }
    }

    /// A reader that hands out at most one byte per call.
    struct Trickle(Cursor<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    /// A reader that fails after its data (also used by the xz decoders'
    /// tests).
    pub(super) struct FailsAfter(pub(super) Cursor<Vec<u8>>);

    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "network gone",
                )),
                n => Ok(n),
            }
        }
    }

    #[test]
    fn round_trip_each_codec() {
        let data = sample(200_000, 1);
        for format in ALL {
            let (layers, out) = decode(encode(format, &data)).unwrap();
            assert_eq!(layers, vec![format]);
            assert!(out == data, "{format} round trip differs");
        }
    }

    #[test]
    fn empty_payload_in_each_codec() {
        for format in ALL {
            let (layers, out) = decode(encode(format, b"")).unwrap();
            assert_eq!(layers, vec![format]);
            assert_eq!(out, b"", "{format}");
        }
    }

    #[test]
    fn sniffing_loses_no_byte_on_a_slow_source() {
        let data = sample(20_000, 2);
        for format in ALL {
            let input = Trickle(Cursor::new(encode(format, &data)));
            let (layers, mut reader) = decode_all(plain(input)).unwrap();
            assert_eq!(layers, vec![format]);
            let mut out = Vec::new();
            reader.read_to_end(&mut out).unwrap();
            assert!(out == data, "{format}");
        }
        let raw = sample(3000, 3);
        let (layers, mut reader) = decode_all(plain(Trickle(Cursor::new(raw.clone())))).unwrap();
        assert!(layers.is_empty());
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, raw);
    }

    #[test]
    fn multi_member_gzip() {
        let (a, b) = (sample(50_000, 4), sample(30_000, 5));
        let mut bytes = gzip(&a);
        bytes.extend(gzip(&b));
        bytes.extend(gzip(b""));
        let (_, out) = decode(bytes).unwrap();
        assert_eq!(out, [a, b].concat());
    }

    #[test]
    fn multi_stream_xz_with_padding() {
        let (a, b) = (sample(50_000, 6), sample(30_000, 7));
        let mut bytes = xz(&a);
        bytes.extend([0u8; 8]);
        bytes.extend(xz(&b));
        bytes.extend(xz(b""));
        bytes.extend([0u8; 4]);
        let (layers, out) = decode(bytes).unwrap();
        assert_eq!(layers, vec![Compression::Xz]);
        assert_eq!(out, [a, b].concat());
    }

    #[test]
    fn xz_in_many_blocks_decodes_on_threads() {
        let data = sample(300_000, 8);
        let bytes = xz_blocks(&data);
        let (_, out) = decode(bytes.clone()).unwrap();
        assert!(out == data);
        // And the single-threaded path gives the same.
        let options = DecodeOptions {
            xz_threads: 1,
            ..DecodeOptions::default()
        };
        let (_, mut reader) = decode_all_with(plain(Cursor::new(bytes)), &options).unwrap();
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert!(out == data);
    }

    /// Offsets of the integrity check field after each block of a single
    /// xz stream whose blocks state their sizes.
    pub(super) fn xz_check_fields(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
        let header: &[u8; xz_frame::STREAM_HEADER_LEN] =
            bytes[..xz_frame::STREAM_HEADER_LEN].try_into().unwrap();
        let check = xz_frame::stream_header(header).unwrap().check_len() as usize;
        let mut fields = Vec::new();
        let mut at = xz_frame::STREAM_HEADER_LEN;
        while bytes[at] != 0 {
            // A zero byte where a block header would start is the index.
            let len = xz_frame::BlockHeader::len_from_first_byte(bytes[at]);
            let block = xz_frame::BlockHeader::parse(&bytes[at..at + len]).unwrap();
            let compressed = block.compressed.unwrap();
            at += len + (compressed + xz_frame::block_padding(compressed)) as usize;
            fields.push(at..at + check);
            at += check;
        }
        fields
    }

    #[test]
    fn xz_wrong_integrity_check_is_an_error_on_one_thread_and_on_many() {
        use liblzma::stream::Check;
        let data = sample(600_000, 30);
        for check in [Check::Crc32, Check::Crc64, Check::Sha256] {
            let stream = MtStreamBuilder::new()
                .threads(2)
                .block_size(100_000)
                .preset(1)
                .check(check)
                .encoder()
                .unwrap();
            let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
            e.write_all(&data).unwrap();
            let good = e.finish().unwrap();
            let fields = xz_check_fields(&good);
            assert_eq!(fields.len(), 6, "{check:?}");
            for xz_threads in [1, 2] {
                let options = DecodeOptions {
                    xz_threads,
                    ..DecodeOptions::default()
                };
                let decoded = |bytes: Vec<u8>| {
                    let (_, mut reader) = decode_all_with(plain(Cursor::new(bytes)), &options)?;
                    let mut out = Vec::new();
                    reader.read_to_end(&mut out)?;
                    Ok::<_, DecodeError>(out)
                };
                assert!(decoded(good.clone()).unwrap() == data);
                // The blocks are intact: only comparing the check finds it.
                let mut bad = good.clone();
                bad[fields[3].end - 1] ^= 0x01;
                match decoded(bad) {
                    Err(DecodeError::Stream(StreamError::Corrupt { .. })) => {}
                    Err(DecodeError::Io(e)) => match stream_error(&e) {
                        Some(StreamError::Corrupt { .. }) => {}
                        _ => panic!("{check:?}, {xz_threads} threads: {e}"),
                    },
                    other => panic!("{check:?}, {xz_threads} threads: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn xz_memory_limit_is_an_error() {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6); // 8 MiB dictionary
        e.write_all(&sample(10_000, 20)).unwrap();
        let bytes = e.finish().unwrap();
        let options = DecodeOptions {
            xz_memlimit: 1 << 20,
            ..DecodeOptions::default()
        };
        let result = decode_all_with(plain(Cursor::new(bytes)), &options).and_then(|(_, mut r)| {
            let mut out = Vec::new();
            r.read_to_end(&mut out)?;
            Ok(out)
        });
        match result {
            Err(DecodeError::Stream(e @ StreamError::MemoryLimit { .. })) => assert!(
                e.to_string()
                    .starts_with("xz stream needs more than the 1 MiB memory limit to decode"),
                "{e}"
            ),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("decoded above the memory limit"),
        }
    }

    #[test]
    fn xz_bad_padding_is_an_error() {
        let mut bytes = xz(b"hello");
        bytes.extend([0u8; 3]);
        let err = expect_stream_error(decode(bytes));
        assert!(err.to_string().contains("multiple of 4"), "{err}");
    }

    #[test]
    fn multi_frame_zstd_with_skippable_frames() {
        let (a, b) = (sample(50_000, 9), sample(30_000, 10));
        let skippable = |n: u8| {
            let mut f = vec![0x50 + n, 0x2a, 0x4d, 0x18, 5, 0, 0, 0];
            f.extend(b"skip!");
            f
        };
        // A file that starts with a skippable frame is still zstd.
        let mut bytes = skippable(0);
        bytes.extend(zstd(&a));
        bytes.extend(skippable(0xf));
        bytes.extend(zstd(&b));
        let (layers, out) = decode(bytes).unwrap();
        assert_eq!(layers, vec![Compression::Zstd]);
        assert_eq!(out, [a, b].concat());
    }

    #[test]
    fn zstd_large_window() {
        let data = sample(100_000, 11);
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        e.long_distance_matching(true).unwrap();
        e.window_log(28).unwrap(); // above zstd's default decoder limit (27)
        e.include_contentsize(false).unwrap();
        e.write_all(&data).unwrap();
        let bytes = e.finish().unwrap();
        let decode_with = |window_log_max| {
            let options = DecodeOptions {
                zstd_window_log_max: window_log_max,
                limits_basis: "test limit".into(),
                ..DecodeOptions::default()
            };
            decode_all_with(plain(Cursor::new(bytes.clone())), &options).and_then(|(_, mut r)| {
                let mut out = Vec::new();
                r.read_to_end(&mut out)?;
                Ok(out)
            })
        };
        assert!(decode_with(28).unwrap() == data);
        // One below: refused as too big for the limit, not as corrupt.
        match decode_with(27) {
            Err(DecodeError::Stream(e @ StreamError::MemoryLimit { .. })) => assert_eq!(
                e.to_string(),
                "zstd stream needs more than the 128 MiB window limit to decode (derived \
                 from the test limit); refusing it instead of running out of memory"
            ),
            Err(DecodeError::Io(e)) => match stream_error(&e) {
                Some(StreamError::MemoryLimit { limit_mib: 128, .. }) => {}
                _ => panic!("{e}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn multi_stream_bzip2() {
        let (a, b) = (sample(50_000, 12), sample(30_000, 13));
        let mut bytes = bzip2(&a);
        bytes.extend(bzip2(&b));
        let (_, out) = decode(bytes).unwrap();
        assert_eq!(out, [a, b].concat());
    }

    #[test]
    fn nested_layers_outermost_first() {
        let data = sample(40_000, 14);
        let bytes = xz(&gzip(&data)); // a .gz.xz
        let (layers, out) = decode(bytes).unwrap();
        assert_eq!(layers, vec![Compression::Xz, Compression::Gzip]);
        assert!(out == data);

        let bytes = bzip2(&zstd(&xz(&gzip(&data))));
        let (layers, out) = decode(bytes).unwrap();
        assert_eq!(
            layers,
            vec![
                Compression::Bzip2,
                Compression::Zstd,
                Compression::Xz,
                Compression::Gzip
            ]
        );
        assert!(out == data);
    }

    #[test]
    fn too_many_layers_is_an_error() {
        let bytes = gzip(&gzip(&gzip(&gzip(&gzip(b"deep")))));
        match decode_all(plain(Cursor::new(bytes))) {
            Err(DecodeError::TooManyLayers { limit: 4, layers }) => {
                assert_eq!(layers, "gzip in gzip in gzip in gzip in gzip")
            }
            Err(e) => panic!("wrong error {e}"),
            Ok((layers, _)) => panic!("accepted {layers:?}"),
        }
    }

    #[test]
    fn truncated_stream_is_an_error_in_each_codec() {
        let data = sample(100_000, 15);
        for format in ALL {
            let full = encode(format, &data);
            for cut in [full.len() / 2, full.len() - 1] {
                let err = expect_stream_error(decode(full[..cut].to_vec()));
                assert_eq!(
                    err,
                    StreamError::Truncated { format },
                    "{format} cut at {cut}"
                );
                assert_eq!(
                    err.to_string(),
                    format!("{format} stream ended early (truncated download?)")
                );
            }
        }
    }

    #[test]
    fn magic_alone_is_a_truncated_stream() {
        for (format, bytes) in [
            (Compression::Gzip, GZIP_MAGIC.to_vec()),
            (Compression::Xz, XZ_MAGIC.to_vec()),
            (Compression::Zstd, ZSTD_MAGIC.to_vec()),
            (
                Compression::Bzip2,
                [b"BZh9".as_slice(), BZIP2_BLOCK_MAGIC].concat(),
            ),
        ] {
            let result = decode_all(plain(Cursor::new(bytes))).and_then(|(_, mut r)| {
                let mut out = Vec::new();
                r.read_to_end(&mut out)?;
                Ok(out)
            });
            let err = result.expect_err("must fail");
            let text = err.to_string();
            assert!(text.starts_with(format.name()), "{format}: {text}");
            assert!(text.contains("ended early"), "{format}: {text}");
        }
    }

    #[test]
    fn corrupt_stream_is_an_error_in_each_codec() {
        let data = sample(100_000, 16);
        for format in ALL {
            let mut bytes = encode(format, &data);
            let mid = bytes.len() / 2;
            for b in &mut bytes[mid..mid + 64] {
                *b ^= 0x5a;
            }
            let err = expect_stream_error(decode(bytes));
            assert!(
                matches!(err, StreamError::Corrupt { format: f, .. } if f == format),
                "{format}: {err}"
            );
            assert!(err
                .to_string()
                .starts_with(&format!("{format} stream is corrupt: ")));
        }
    }

    #[test]
    fn corrupt_header_is_named() {
        // gzip with a reserved flag bit set.
        let mut bytes = gzip(b"data");
        bytes[3] = 0xe0;
        let err = expect_stream_error(decode(bytes));
        assert!(
            err.to_string().starts_with("gzip stream is corrupt: "),
            "{err}"
        );
    }

    #[test]
    fn trailing_garbage_is_an_error_in_each_codec() {
        let data = sample(10_000, 17);
        for format in ALL {
            for tail in [&b"garbage after the stream"[..], &[0u8; 512][..]] {
                if format == Compression::Xz && tail[0] == 0 {
                    continue; // zero bytes in multiples of 4 are xz stream padding
                }
                let mut bytes = encode(format, &data);
                bytes.extend_from_slice(tail);
                let err = expect_stream_error(decode(bytes));
                assert!(
                    matches!(err, StreamError::Corrupt { format: f, .. } if f == format),
                    "{format}: {err}"
                );
            }
        }
        // (gzip: fewer than 10 bytes of garbage read as a cut-off member
        // header, "ended early"; still an error.)
        let mut bytes = gzip(&data);
        bytes.extend(b"garbage after the stream");
        let err = expect_stream_error(decode(bytes));
        assert!(err.to_string().contains("trailing garbage"), "{err}");
        let mut bytes = xz(&data);
        bytes.extend(b"garbage after the stream");
        let err = expect_stream_error(decode(bytes));
        assert!(err.to_string().contains("trailing garbage"), "{err}");
    }

    #[test]
    fn source_errors_pass_through_unchanged() {
        let data = sample(10_000, 18);
        for format in ALL {
            let bytes = encode(format, &data);
            let cut = bytes[..bytes.len() / 2].to_vec();
            // Fails in decode_all (if sniffing decoded it all) or in reading.
            let err = match decode_all(plain(FailsAfter(Cursor::new(cut)))) {
                Err(DecodeError::Io(e)) => e,
                Err(other) => panic!("{format}: {other}"),
                Ok((_, mut reader)) => reader.read_to_end(&mut Vec::new()).unwrap_err(),
            };
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{format}");
            assert_eq!(err.to_string(), "network gone", "{format}");
            assert!(stream_error(&err).is_none());
        }
        // An inner layer sees the outer layer's error unchanged too.
        let bytes = xz(&gzip(&data));
        let cut = bytes[..bytes.len() / 2].to_vec();
        let (layers, mut reader) = decode_all(plain(Cursor::new(cut))).unwrap();
        assert_eq!(layers, vec![Compression::Xz, Compression::Gzip]);
        let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(
            stream_error(&err),
            Some(&StreamError::Truncated {
                format: Compression::Xz
            })
        );
    }

    #[test]
    fn error_right_at_the_start_is_a_decode_error() {
        // A nested gzip whose header is broken is sniffed by its magic, then
        // fails on its header while decode_all looks at its first bytes.
        let mut inner = gzip(b"inner");
        inner[2] = 9; // unknown compression method
        match decode_all(plain(Cursor::new(xz(&inner)))) {
            Err(DecodeError::Stream(StreamError::Corrupt {
                format: Compression::Gzip,
                ..
            })) => {}
            Err(other) => panic!("{other:?}"),
            Ok((layers, _)) => panic!("accepted {layers:?}"),
        }
        match decode_all(plain(Cursor::new(xz(&[0x1f, 0x8b, 0x08])))) {
            Err(
                e @ DecodeError::Stream(StreamError::Truncated {
                    format: Compression::Gzip,
                }),
            ) => assert_eq!(
                e.to_string(),
                "gzip stream ended early (truncated download?)"
            ),
            Err(other) => panic!("{other:?}"),
            Ok((layers, _)) => panic!("accepted {layers:?}"),
        }
    }

    #[test]
    fn raw_input_passes_through_untouched() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x1f],
            vec![0xfd],
            b"BZh".to_vec(),
            b"BZh91AY&SX not bzip2".to_vec(),
            b"BZh9 some text".to_vec(),
            vec![0x28, 0xb5, 0x2f],
            vec![0x60, 0x2a, 0x4d, 0x18, 0, 0], // not a skippable magic
            b"QFI\xfb\0\0\0\x03".to_vec(),
            sample(70_000, 19),
        ];
        for raw in cases {
            let (layers, out) = decode(raw.clone()).unwrap();
            assert!(layers.is_empty(), "{:?}", &raw[..raw.len().min(10)]);
            assert_eq!(out, raw);
        }
    }

    #[test]
    fn sniff_compression_magics() {
        assert_eq!(sniff_compression(&[0x1f, 0x8b]), Some(Compression::Gzip));
        assert_eq!(sniff_compression(XZ_MAGIC), Some(Compression::Xz));
        assert_eq!(sniff_compression(&XZ_MAGIC[..5]), None);
        assert_eq!(sniff_compression(ZSTD_MAGIC), Some(Compression::Zstd));
        assert_eq!(
            sniff_compression(&[0x5f, 0x2a, 0x4d, 0x18]),
            Some(Compression::Zstd)
        );
        assert_eq!(sniff_compression(&[0x4f, 0x2a, 0x4d, 0x18]), None);
        let bz = [b"BZh1".as_slice(), BZIP2_BLOCK_MAGIC].concat();
        assert_eq!(sniff_compression(&bz), Some(Compression::Bzip2));
        let bz_empty = [b"BZh9".as_slice(), BZIP2_EOS_MAGIC].concat();
        assert_eq!(sniff_compression(&bz_empty), Some(Compression::Bzip2));
        let bz_level0 = [b"BZh0".as_slice(), BZIP2_BLOCK_MAGIC].concat();
        assert_eq!(sniff_compression(&bz_level0), None);
        assert_eq!(sniff_compression(b""), None);
        assert_eq!(Compression::Bzip2.to_string(), "bzip2");
    }

    #[test]
    fn corpus_gzip_and_xz() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/dfvfs/");
        let read = |name: &str| std::fs::read(format!("{dir}{name}"));
        let (Ok(gz), Ok(xzb), Ok(corrupt)) =
            (read("syslog.gz"), read("syslog.xz"), read("corrupt1.gz"))
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "corpus missing under {dir}"
            );
            eprintln!("corpus not found under {dir}; skipped");
            return;
        };
        // sha256 of what `gzip -dc syslog.gz` and `xz -dc syslog.xz` print.
        const SYSLOG_SHA256: &str =
            "0420b023f8dc1b71ff25191ce4ce88d10028f99f99f7c21532611f4c273aeae9";
        let sha256 = |b: &[u8]| {
            use sha2::Digest;
            sha2::Sha256::digest(b)
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        };
        let (layers, out) = decode(gz).unwrap();
        assert_eq!(layers, vec![Compression::Gzip]);
        assert_eq!(out.len(), 1247);
        assert_eq!(sha256(&out), SYSLOG_SHA256);
        let (layers, out_xz) = decode(xzb).unwrap();
        assert_eq!(layers, vec![Compression::Xz]);
        assert_eq!(out_xz, out);
        // corrupt1.gz is cut short: gzip -dc says "unexpected end of file"
        // after 2994187 bytes. The error comes while reading, not sniffing.
        let (layers, mut reader) = decode_all(plain(Cursor::new(corrupt))).unwrap();
        assert_eq!(layers, vec![Compression::Gzip]);
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "gzip stream ended early (truncated download?)"
        );
        assert_eq!(
            stream_error(&err),
            Some(&StreamError::Truncated {
                format: Compression::Gzip
            })
        );
    }
}
