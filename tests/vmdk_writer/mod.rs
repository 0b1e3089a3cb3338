//! Writes VMDK layouts qemu-img cannot make, for tests/vmdk_matrix.rs: sparse and
//! stream extents with other grain sizes, VMware's stream layout (every grain table
//! after its grains, GD + footer + end-of-stream marker last) rebuilt from a qemu-img
//! stream, and ESX COWD files. qemu-img then converts each one as the oracle.

use std::io::Write;

pub const SECTOR: u64 = 512;

/// The embedded descriptor every built `KDMV` file carries.
fn descriptor(create_type: &str, sectors: u64) -> Vec<u8> {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n\nRW {sectors} SPARSE \"built.vmdk\"\n"
    )
    .into_bytes()
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn pad_to_sector(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(SECTOR as usize), 0);
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A `KDMV` header.
struct KdmvHeader {
    version: u32,
    flags: u32,
    capacity: u64,
    grain: u64,
    gtes: u32,
    gd: u64,
    overhead: u64,
    compress: u16,
}

impl KdmvHeader {
    fn bytes(&self) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[0..4].copy_from_slice(b"KDMV");
        put_u32(&mut h, 4, self.version);
        put_u32(&mut h, 8, self.flags);
        put_u64(&mut h, 12, self.capacity);
        put_u64(&mut h, 20, self.grain);
        put_u64(&mut h, 28, 1);
        put_u64(&mut h, 36, 1);
        put_u32(&mut h, 44, self.gtes);
        put_u64(&mut h, 56, self.gd);
        put_u64(&mut h, 64, self.overhead);
        h[73..77].copy_from_slice(b"\n \r\n");
        h[77..79].copy_from_slice(&self.compress.to_le_bytes());
        h
    }
}

/// A monolithicSparse (or, with `stream`, a qemu-layout streamOptimized) extent of
/// `raw` with `grain_sectors` grains and `gtes` entries per grain table: GD at
/// sector 2, every GT after it, grains (non-zero ones only) in guest order.
pub fn sparse_extent(raw: &[u8], grain_sectors: u64, gtes: u64, stream: bool) -> Vec<u8> {
    let capacity = raw.len() as u64;
    let grain = grain_sectors * SECTOR;
    let coverage = gtes * grain;
    let gd_entries = capacity.div_ceil(coverage);
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    let gt_sectors = (gtes * 4).div_ceil(SECTOR);
    let first_gt = 2 + gd_sectors;
    let tables_end = (first_gt + gd_entries * gt_sectors) * SECTOR;
    let overhead = tables_end.next_multiple_of(grain.max(SECTOR)) / SECTOR;
    let header = KdmvHeader {
        version: if stream { 3 } else { 1 },
        flags: if stream { 0x30001 } else { 0x1 },
        capacity: capacity / SECTOR,
        grain: grain_sectors,
        gtes: gtes as u32,
        gd: 2,
        overhead,
        compress: u16::from(stream),
    };
    let mut out = header.bytes();
    let create_type = if stream {
        "streamOptimized"
    } else {
        "monolithicSparse"
    };
    out.extend(descriptor(create_type, capacity / SECTOR));
    out.resize((overhead * SECTOR) as usize, 0);
    let mut gts = vec![0u32; (gd_entries * gtes) as usize];
    for (g, chunk) in raw.chunks(grain as usize).enumerate() {
        if chunk.iter().all(|&b| b == 0) {
            continue;
        }
        gts[g] = (out.len() as u64 / SECTOR) as u32;
        if stream {
            let packed = zlib(chunk);
            out.extend((g as u64 * grain_sectors).to_le_bytes());
            out.extend((packed.len() as u32).to_le_bytes());
            out.extend(packed);
        } else {
            out.extend(chunk);
            out.resize(out.len().next_multiple_of(grain as usize), 0);
        }
        pad_to_sector(&mut out);
    }
    for i in 0..gd_entries {
        let gt = first_gt + i * gt_sectors;
        put_u32(&mut out, (2 * SECTOR + i * 4) as usize, gt as u32);
        for j in 0..gtes {
            let at = (gt * SECTOR + j * 4) as usize;
            put_u32(&mut out, at, gts[(i * gtes + j) as usize]);
        }
    }
    out
}

/// Rebuilds a qemu-img streamOptimized file in VMware's layout: the same
/// compressed grains, each grain table after its grains (empty ones omitted), then
/// the GD, the footer and the end-of-stream marker.
pub fn vmware_layout(qemu: &[u8]) -> Vec<u8> {
    let capacity = u64_at(qemu, 12);
    let grain = u64_at(qemu, 20);
    let gtes = u64::from(u32_at(qemu, 44));
    let gd_sector = u64_at(qemu, 56);
    let overhead = u64_at(qemu, 64);
    let desc_end = ((u64_at(qemu, 28) + u64_at(qemu, 36)) * SECTOR) as usize;
    let gd_entries = capacity.div_ceil(gtes * grain);
    let mut header = qemu[..512].to_vec();
    put_u32(&mut header, 8, 0x30001);
    put_u64(&mut header, 48, 0);
    put_u64(&mut header, 56, u64::MAX);
    let mut out = header.clone();
    out.extend(&qemu[512..desc_end]);
    out.resize((overhead * SECTOR) as usize, 0);
    let metadata_marker = |out: &mut Vec<u8>, sectors: u64, kind: u32| {
        let mut m = vec![0u8; 512];
        put_u64(&mut m, 0, sectors);
        put_u32(&mut m, 12, kind);
        out.extend(m);
    };
    let mut gd = vec![0u32; gd_entries as usize];
    for (i, entry) in gd.iter_mut().enumerate() {
        let gt_at =
            (u64::from(u32_at(qemu, (gd_sector * SECTOR) as usize + i * 4)) * SECTOR) as usize;
        let mut gt = vec![0u32; gtes as usize];
        for (j, slot) in gt.iter_mut().enumerate() {
            let sector = u64::from(u32_at(qemu, gt_at + j * 4));
            if sector == 0 {
                continue;
            }
            let at = (sector * SECTOR) as usize;
            let size = u32_at(qemu, at + 8) as usize;
            *slot = (out.len() as u64 / SECTOR) as u32;
            out.extend(&qemu[at..at + 12 + size]);
            pad_to_sector(&mut out);
        }
        if gt.iter().all(|&s| s == 0) {
            continue;
        }
        metadata_marker(&mut out, (gtes * 4).div_ceil(SECTOR), 1);
        *entry = (out.len() as u64 / SECTOR) as u32;
        for s in gt {
            out.extend(s.to_le_bytes());
        }
        pad_to_sector(&mut out);
    }
    metadata_marker(&mut out, (gd_entries * 4).div_ceil(SECTOR), 2);
    let gd_at = out.len() as u64 / SECTOR;
    for s in gd {
        out.extend(s.to_le_bytes());
    }
    pad_to_sector(&mut out);
    metadata_marker(&mut out, 1, 3);
    put_u64(&mut header, 56, gd_at);
    out.extend(header);
    out.extend([0u8; 512]);
    out
}

/// An ESX COWD file of `raw` with `granularity`-sector grains: header, descriptor
/// text with a CID at byte 512 (qemu needs it), GD at sector 4, 4096-entry grain
/// tables, then the non-zero grains in guest order. `text` replaces the descriptor.
pub fn cowd(raw: &[u8], granularity: u64, text: Option<&str>) -> Vec<u8> {
    let grain = granularity * SECTOR;
    let disk_sectors = raw.len() as u64 / SECTOR;
    let coverage = 4096 * grain;
    let gd_entries = (raw.len() as u64).div_ceil(coverage);
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    let first_gt = 4 + gd_sectors;
    let mut out = vec![0u8; 512];
    out[0..4].copy_from_slice(b"COWD");
    put_u32(&mut out, 4, 1);
    put_u32(&mut out, 8, 3);
    put_u32(&mut out, 12, disk_sectors as u32);
    put_u32(&mut out, 16, granularity as u32);
    put_u32(&mut out, 20, 4);
    put_u32(&mut out, 24, gd_entries as u32);
    out.extend(
        text.unwrap_or("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n")
            .as_bytes(),
    );
    out.resize(((first_gt + gd_entries * 32) * SECTOR) as usize, 0);
    let mut gts = vec![0u32; (gd_entries * 4096) as usize];
    for (g, chunk) in raw.chunks(grain as usize).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            gts[g] = (out.len() as u64 / SECTOR) as u32;
            out.extend(chunk);
            pad_to_sector(&mut out);
        }
    }
    let file_sectors = out.len() as u64 / SECTOR;
    put_u32(&mut out, 28, file_sectors as u32);
    for i in 0..gd_entries {
        let gt = first_gt + i * 32;
        put_u32(&mut out, (4 * SECTOR + i * 4) as usize, gt as u32);
        for j in 0..4096 {
            put_u32(
                &mut out,
                (gt * SECTOR + j * 4) as usize,
                gts[(i * 4096 + j) as usize],
            );
        }
    }
    out
}
