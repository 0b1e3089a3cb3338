//! Unit tests of the streaming reader on hand-built images: layouts qemu does
//! not write by itself (tables after data, shared tables, hostile sizes), so
//! each path of the engine is exercised with an exact expected result.

use bytes::Bytes;

use super::{convert_stream, Qcow2Error};
use crate::format::engine::test_sink::MemorySink;
use crate::format::engine::{ImageError, StreamError, StreamOptions};
use crate::stream::ChunkStream;

const CLUSTER: u64 = 65536;

/// A v3 image with 64 KiB clusters, built cluster by cluster.
struct Image {
    bytes: Vec<u8>,
}

impl Image {
    /// Header with `virtual_size`, L1 at cluster `l1_cluster` with `l1_size`
    /// entries, refcount table at cluster 1.
    fn new(virtual_size: u64, l1_cluster: u64, l1_size: u32, clusters: u64) -> Self {
        let mut bytes = vec![0u8; (clusters * CLUSTER) as usize];
        let h = &mut bytes[..112];
        h[0..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&virtual_size.to_be_bytes());
        h[36..40].copy_from_slice(&l1_size.to_be_bytes());
        h[40..48].copy_from_slice(&(l1_cluster * CLUSTER).to_be_bytes());
        h[48..56].copy_from_slice(&CLUSTER.to_be_bytes());
        h[56..60].copy_from_slice(&1u32.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        Image { bytes }
    }
    fn set_u64(&mut self, at: u64, value: u64) {
        self.bytes[at as usize..at as usize + 8].copy_from_slice(&value.to_be_bytes());
    }
    fn l1(&mut self, l1_cluster: u64, index: u64, l2_cluster: u64) {
        self.set_u64(
            l1_cluster * CLUSTER + index * 8,
            (l2_cluster * CLUSTER) | (1 << 63),
        );
    }
    fn l2(&mut self, l2_cluster: u64, index: u64, data_cluster: u64) {
        self.set_u64(
            l2_cluster * CLUSTER + index * 8,
            (data_cluster * CLUSTER) | (1 << 63),
        );
    }
    fn fill(&mut self, cluster: u64, byte: u8) {
        let at = (cluster * CLUSTER) as usize;
        self.bytes[at..at + CLUSTER as usize].fill(byte);
    }
}

fn convert(image: &[u8], options: &StreamOptions) -> Result<Vec<u8>, ImageError> {
    let mut stream = ChunkStream::from_bytes(Bytes::copy_from_slice(image));
    let mut sink = MemorySink::default();
    convert_stream(&mut stream, &mut sink, options)?;
    Ok(sink.disk)
}

fn expect_clusters(disk: &[u8], expected: &[u8]) {
    for (i, byte) in expected.iter().enumerate() {
        let c = &disk[i * CLUSTER as usize..(i + 1) * CLUSTER as usize];
        assert!(
            c.iter().all(|b| b == byte),
            "guest cluster {i} should be all {byte:#x}"
        );
    }
}

/// No memory budget: every unclaimed byte goes to a spill file in `dir`.
fn spill_everything(dir: &std::path::Path) -> StreamOptions {
    StreamOptions {
        memory_budget: 0,
        scratch_dir: dir.to_path_buf(),
        spill_allowed: true,
        collect_map: false,
    }
}

/// Data first, then its L2 table, then L1 last (as after `qemu-img resize`).
fn tables_at_end() -> Image {
    let mut img = Image::new(4 * CLUSTER, 9, 1, 10);
    img.fill(2, 0xA1);
    img.fill(3, 0xA2);
    img.fill(5, 0xA3);
    img.l2(8, 0, 3);
    img.l2(8, 1, 2);
    img.l2(8, 3, 5);
    img.l1(9, 0, 8);
    img
}

#[test]
fn tables_after_their_data_convert_from_memory() {
    let disk = convert(&tables_at_end().bytes, &StreamOptions::default()).unwrap();
    expect_clusters(&disk, &[0xA2, 0xA1, 0, 0xA3]);
}

#[test]
fn tables_after_their_data_convert_through_the_spill_file() {
    let dir = tempfile::tempdir().unwrap();
    let options = spill_everything(dir.path());
    let disk = convert(&tables_at_end().bytes, &options).unwrap();
    expect_clusters(&disk, &[0xA2, 0xA1, 0, 0xA3]);
}

#[test]
fn two_l1_entries_sharing_one_l2_table_fill_both_ranges() {
    // 64K clusters: one L2 table maps 512 MiB; use a 1 GiB disk, but only
    // check the first cluster of each half.
    let gib = 1u64 << 30;
    let mut img = Image::new(gib, 2, 2, 5);
    img.l1(2, 0, 3);
    img.l1(2, 1, 3);
    img.l2(3, 0, 4);
    img.fill(4, 0x5A);
    let disk = convert(&img.bytes, &StreamOptions::default()).unwrap();
    let half = (gib / 2) as usize;
    assert!(disk[..CLUSTER as usize].iter().all(|b| *b == 0x5A));
    assert!(disk[half..half + CLUSTER as usize]
        .iter()
        .all(|b| *b == 0x5A));
    assert!(disk[CLUSTER as usize..half].iter().all(|b| *b == 0));
}

#[test]
fn a_host_cluster_mapped_twice_is_written_twice() {
    let mut img = Image::new(2 * CLUSTER, 2, 1, 5);
    img.l1(2, 0, 3);
    img.l2(3, 0, 4);
    img.l2(3, 1, 4);
    img.fill(4, 0x77);
    let disk = convert(&img.bytes, &StreamOptions::default()).unwrap();
    expect_clusters(&disk, &[0x77, 0x77]);
}

#[test]
fn huge_l1_claims_do_not_allocate_and_end_as_truncation() {
    // 2 TiB of guest space needs 4096 L1 entries; the file ends after the header.
    let mut img = Image::new(2 << 40, 2, 4096, 1);
    img.bytes.truncate(CLUSTER as usize);
    let err = convert(&img.bytes, &StreamOptions::default()).unwrap_err();
    match err.as_stream() {
        Some(StreamError::Truncated { what, .. }) => assert!(what.contains("L1"), "{what}"),
        _ => panic!("expected a truncation error, got {err:?}"),
    }
}

#[test]
fn too_many_l2_tables_for_the_budget_are_refused() {
    let mut img = Image::new(4 << 30, 2, 8, 12);
    for i in 0..8 {
        img.l1(2, i, 3 + i);
    }
    let options = StreamOptions {
        memory_budget: 0,
        ..StreamOptions::default()
    };
    // The budget floor still allows thousands of tables: 8 pass.
    assert!(convert(&img.bytes, &options).is_ok());
}

#[test]
fn data_mapped_onto_the_refcount_table_is_refused() {
    let mut img = Image::new(CLUSTER, 2, 1, 4);
    img.l1(2, 0, 3);
    img.l2(3, 0, 1);
    let err = convert(&img.bytes, &StreamOptions::default()).unwrap_err();
    assert!(err.to_string().contains("refcount table"), "{err}");
}

#[test]
fn an_image_cut_inside_a_data_cluster_is_an_error_not_zeroes() {
    let mut img = Image::new(CLUSTER, 2, 1, 5);
    img.l1(2, 0, 3);
    img.l2(3, 0, 4);
    img.fill(4, 0x11);
    img.bytes.truncate((4 * CLUSTER + 100) as usize);
    let err = convert(&img.bytes, &StreamOptions::default()).unwrap_err();
    assert!(
        matches!(err.as_stream(), Some(StreamError::Truncated { .. })),
        "{err}"
    );
}

#[test]
fn without_scratch_space_a_spill_is_refused_as_scratch_required() {
    let options = StreamOptions {
        memory_budget: 0,
        spill_allowed: false,
        ..StreamOptions::default()
    };
    let err = convert(&tables_at_end().bytes, &options).unwrap_err();
    assert!(
        matches!(err.as_stream(), Some(StreamError::ScratchRequired { .. })),
        "{err}"
    );
}

#[test]
fn a_long_run_mapped_onto_passed_bytes_is_served_in_pieces() {
    // 40 contiguous data clusters (2.5 MiB, more than one piece of past
    // bytes), then the L2 table mapping them, then the L1 table.
    let mut img = Image::new(64 * CLUSTER, 50, 1, 51);
    for i in 0..40 {
        img.fill(2 + i, i as u8 + 1);
        img.l2(49, i, 2 + i);
    }
    img.l1(50, 0, 49);
    let expected: Vec<u8> = (1..=40).chain([0, 0]).collect();
    let disk = convert(&img.bytes, &StreamOptions::default()).unwrap();
    expect_clusters(&disk, &expected);
    let dir = tempfile::tempdir().unwrap();
    let disk = convert(&img.bytes, &spill_everything(dir.path())).unwrap();
    expect_clusters(&disk, &expected);
}

#[test]
fn compressed_clusters_pending_beyond_the_budget_are_refused() {
    // One L2 table whose 8192 entries all name a compressed cluster far past
    // the end of the file: each is a pending want until its bytes come, so
    // their number is bounded like any other want (4096 with no budget).
    let mut img = Image::new(512 << 20, 2, 1, 4);
    img.l1(2, 0, 3);
    for i in 0..8192 {
        img.set_u64(3 * CLUSTER + i * 8, (1 << 62) | (1 << 40));
    }
    let options = StreamOptions {
        memory_budget: 0,
        ..StreamOptions::default()
    };
    let err = convert(&img.bytes, &options).unwrap_err();
    match err.as_stream() {
        Some(StreamError::MemoryBudget { what, .. }) => {
            assert!(what.contains("compressed"), "{what}")
        }
        _ => panic!("expected the memory budget to refuse, got {err:?}"),
    }
}

#[test]
fn table_offsets_beyond_2_pow_56_are_refused() {
    for (field, what) in [(48, "refcount table"), (40, "L1 table")] {
        let mut img = Image::new(CLUSTER, 2, 1, 3);
        img.set_u64(field, 0xFFFF_FFFF_FFFF_0000);
        let err = convert(&img.bytes, &StreamOptions::default()).unwrap_err();
        match err.downcast_format::<Qcow2Error>() {
            Some(e @ Qcow2Error::TableOffsetOutOfRange { .. }) => {
                assert!(e.to_string().starts_with(what), "{e}")
            }
            _ => panic!("expected {what} out of range, got {err:?}"),
        }
    }
}

#[test]
fn an_l1_size_qemu_refuses_is_refused_even_if_few_entries_are_needed() {
    let mut img = Image::new(CLUSTER, 2, 1, 3);
    img.bytes[36..40].copy_from_slice(&((4u32 << 20) + 1).to_be_bytes());
    let err = convert(&img.bytes, &StreamOptions::default()).unwrap_err();
    assert!(
        matches!(
            err.downcast_format::<Qcow2Error>(),
            Some(Qcow2Error::L1TooLarge { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("too large"), "{err}");
}

#[test]
fn data_mapped_onto_a_refcount_block_is_refused() {
    // The refcount table (cluster 1) names a refcount block at cluster 4; an L2
    // entry maps guest data onto it.
    let mut img = Image::new(2 * CLUSTER, 2, 1, 6);
    img.set_u64(CLUSTER, 4 * CLUSTER);
    img.l1(2, 0, 3);
    img.l2(3, 0, 5);
    img.l2(3, 1, 4);
    let err = convert(&img.bytes, &StreamOptions::default()).unwrap_err();
    assert!(err.to_string().contains("refcount block"), "{err}");
}
